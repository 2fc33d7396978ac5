"""Everything compliance writes: its catalog and snapshots, and audit events (exports, reviews).

Each service runs in one transaction with its audit event. Compliance never writes to the other
apps' tables; the only writes outside its own are audit events through `audit.services.record`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts import services as accounts
from audit.models import AuditEvent
from audit.services import record
from kms_console.lib.errors import ApplicationError, Forbidden, NotFound
from kms_console.lib.roles import Role

from . import reports
from .assessment import assess, framework_controls
from .catalog import SyncResult, read_catalog, sync_catalog
from .checks.audit_trail import REVIEW_ACTION, SECURITY_FAILURES
from .models import Control, Framework, Snapshot, SnapshotFramework

MAX_NOTE = 1000


# --- Frameworks -----------------------------------------------------------------------------------


def get_framework(value: Any) -> Framework:
    """The framework named by its slug (pci-dss) or its catalog name ("PCI DSS 4.0.1")."""
    if not isinstance(value, str) or not value.strip():
        raise ApplicationError(
            "Name a framework (for example pci-dss, hipaa, nist-800-53 or nist-800-57).",
            code="framework_required",
            details={"framework": ["This parameter is required."]},
        )
    value = value.strip()
    # A handful of rows: match in Python, so no client text (NUL bytes, huge strings) reaches SQL.
    frameworks = list(Framework.objects.all())
    for framework in frameworks:
        if value.lower() == framework.slug or value == framework.name:
            return framework
    known = ", ".join(f.slug for f in frameworks) or "none loaded"
    shown = value[:40].encode("unicode_escape").decode("ascii")
    raise NotFound(f"No framework named {shown!r} (known: {known}).", code="unknown_framework")


# --- Catalog --------------------------------------------------------------------------------------


def load_catalog(*, path: Path | str | None = None, actor: Any = None) -> SyncResult:
    """Bring the catalog tables in line with the file (settings.KMS_CONTROLS_FILE by default)."""
    path = Path(path or settings.KMS_CONTROLS_FILE)
    catalog = read_catalog(path)
    with transaction.atomic():
        synced = sync_catalog(catalog, Framework, Control)
        record(
            "compliance.catalog_loaded",
            actor=actor,
            target_type="compliance",
            target_id="catalog",
            details={
                "file": str(path),
                "sha256": catalog.sha256,
                "frameworks": synced.frameworks,
                "controls": synced.controls,
                "created": synced.created,
                "updated": synced.updated,
                "removed": synced.removed,
            },
        )
    return synced


# --- Reports --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedReport:
    content: bytes
    content_type: str
    filename: str
    report: dict[str, Any]


def export_report(*, framework: Framework, fmt: Any, actor: Any = None) -> ExportedReport:
    """Compute a report of the framework now, render it, and record the export as an audit event.

    The event names the chain head and checkpoint the report was computed against and the SHA-256
    of the file handed out, so a report can later be matched to the trail.
    """
    renderer = reports.get_format(fmt)
    assessment = assess()
    report = reports.build_report(framework, assessment, framework_controls(framework))
    content = renderer.render(report)
    digest = hashlib.sha256(content).hexdigest()
    stamp = assessment.computed_at.strftime("%Y%m%dT%H%M%SZ")
    filename = f"kms-compliance-{framework.slug}-{stamp}.{renderer.extension}"
    with transaction.atomic():
        record(
            "compliance.report_exported",
            actor=actor,
            target_type="compliance",
            target_id=framework.slug,
            details={
                "framework": framework.name,
                "format": renderer.name,
                "computed_at": assessment.computed_at.isoformat(),
                "chain_seq": assessment.chain.seq,
                "chain_head": assessment.chain.head,
                "checkpoint_seq": assessment.chain.checkpoint_seq,
                "summary": report["summary"],
                "sha256": digest,
                "bytes": len(content),
            },
        )
    return ExportedReport(content=content, content_type=renderer.content_type, filename=filename, report=report)


# --- Snapshots ------------------------------------------------------------------------------------


def take_snapshot(*, now: dt.datetime | None = None) -> tuple[Snapshot, bool]:
    """Record today's snapshot (UTC day) unless it exists. Returns (snapshot, created).

    Beat runs this nightly; running it twice on one day changes nothing. The snapshot compares the
    key check value of every version (no sampling), which is why it runs at night on a worker.
    """
    now = now or timezone.now()
    day = now.astimezone(dt.UTC).date()
    existing = Snapshot.objects.filter(day=day).first()
    if existing is not None:
        return existing, False
    assessment = assess(now=now, kcv_sample=None)
    frameworks = list(Framework.objects.order_by("position"))
    controls = list(Control.objects.select_related("framework").order_by("position"))
    try:
        with transaction.atomic():
            snapshot = Snapshot.objects.create(
                day=day,
                taken_at=now,
                chain_seq=assessment.chain.seq,
                chain_head=assessment.chain.head,
                checkpoint_seq=assessment.chain.checkpoint_seq,
                checks={
                    check_id: {"status": r.status, "figure": r.figure, "offenders": r.offender_count}
                    for check_id, r in assessment.results.items()
                },
            )
            summary = {}
            for framework in frameworks:
                result = assessment.framework(framework, [c for c in controls if c.framework_id == framework.pk])
                SnapshotFramework.objects.create(
                    snapshot=snapshot,
                    framework=framework,
                    passed=result.counts["pass"],
                    warned=result.counts["warn"],
                    failed=result.counts["fail"],
                    not_applicable=result.counts["not_applicable"],
                    not_assessed=result.counts["not_assessed"],
                    controls={row.control.control_id: row.status for row in result.controls},
                )
                summary[framework.slug] = result.counts
            record(
                "compliance.snapshot_taken",
                target_type="compliance",
                target_id=str(day),
                details={"day": str(day), "chain_seq": assessment.chain.seq, "frameworks": summary},
            )
    except IntegrityError:
        # Another worker took today's snapshot between our look and our insert.
        return Snapshot.objects.get(day=day), False
    return snapshot, True


# --- Audit review ---------------------------------------------------------------------------------


def record_audit_review(*, actor: Any, note: str = "") -> AuditEvent:
    """An auditor states that they reviewed the security failures recorded so far (`audit.reviewed`).

    The event counts the failures since the previous review; the audit_review check treats every
    event before this one as reviewed.
    """
    if Role.AUDITOR not in accounts.roles_of(actor):
        raise Forbidden("Only an auditor can record an audit review.", code="role_required")
    note = (note or "").strip()
    if len(note) > MAX_NOTE:
        raise ApplicationError(
            f"The note is longer than {MAX_NOTE} characters.", code="note_too_long", details={"note": ["Too long."]}
        )
    with transaction.atomic():
        previous = (
            AuditEvent.objects.filter(action=REVIEW_ACTION).order_by("-seq").values_list("seq", flat=True).first()
        )
        failures = AuditEvent.objects.filter(action__in=SECURITY_FAILURES, seq__gt=previous or 0)
        return record(
            REVIEW_ACTION,
            actor=actor,
            target_type="audit",
            target_id="review",
            details={
                "previous_review_seq": previous,
                "failures_reviewed": failures.count(),
                "note": note,
            },
        )
