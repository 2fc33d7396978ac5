"""Reports of one framework: one report dictionary, rendered as CSV, JSON, PDF or OSCAL assessment results.

`build_report` turns an assessment into a plain dictionary (what the JSON export is); the other
formats render that same dictionary, so every format states the same statuses and figures. Each
report names the time it was computed, the audit chain head and the latest signed checkpoint.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from django.conf import settings

from kms_console.lib.errors import ApplicationError

from .assessment import Assessment, checks_for_framework
from .checks.base import CONTROL_STATUSES, FAIL, NOT_APPLICABLE, NOT_ASSESSED, PASS, STATUS_LABELS, WARN
from .mapping import CHECK_CONTROLS
from .models import Control, Framework

REPORT_FORMAT_VERSION = 1
# The OSCAL version the assessment-results document declares (what compliance-trestle validates).
OSCAL_VERSION = "1.2.1"
# Our own namespace for OSCAL properties that are not in the OSCAL vocabulary.
OSCAL_NS = "https://kms-console.invalid/ns/oscal"
# Stable identity of the console's evidence checks as an OSCAL tool component.
TOOL_UUID = str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:kms-console:compliance:evidence-checks"))
OFFENDERS_IN_REPORT = 100


# --- The report dictionary ------------------------------------------------------------------------


def build_report(framework: Framework, assessment: Assessment, controls: Iterable[Control]) -> dict[str, Any]:
    result = assessment.framework(framework, controls)
    check_ids = checks_for_framework(framework)
    prefix = f"{framework.name}:"
    checks = []
    for check_id in check_ids:
        outcome = assessment.outcome(check_id)
        if outcome is None:
            continue
        body = outcome.result.as_dict()
        body["offenders"] = body["offenders"][:OFFENDERS_IN_REPORT]
        checks.append(
            {
                "id": check_id,
                "title": outcome.check.title,
                "description": outcome.check.description,
                **body,
                "controls": [key[len(prefix) :] for key in CHECK_CONTROLS[check_id] if key.startswith(prefix)],
            }
        )
    return {
        "report": "kms-console compliance report",
        "format_version": REPORT_FORMAT_VERSION,
        "framework": {"slug": framework.slug, "name": framework.name},
        "computed_at": assessment.computed_at.isoformat(),
        "console": settings.PUBLIC_URL,
        **assessment.chain.as_dict(),
        "summary": {**result.counts, "total": result.total},
        "controls": [
            {
                "id": row.control.control_id,
                "title": row.control.title,
                "short_title": row.control.short_title,
                "lifecycle_phases": list(row.control.lifecycle_phases),
                "status": row.status,
                "figure": row.figure,
                "checks": [o.check.id for o in row.outcomes],
                "offender_count": row.offender_count,
            }
            for row in result.controls
        ],
        "checks": checks,
    }


# --- Formats --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    name: str
    extension: str
    content_type: str
    render: Callable[[dict[str, Any]], bytes]


def _cell(value: Any) -> str:
    """A CSV cell a spreadsheet will not run as a formula."""
    text = str(value if value is not None else "")
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def render_csv(report: dict[str, Any]) -> bytes:
    """One header row, then one row per control; every row names the computation time and chain head."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(
        [
            "framework",
            "control_id",
            "title",
            "lifecycle_phases",
            "status",
            "figure",
            "checks",
            "offenders",
            "computed_at",
            "audit_chain_seq",
            "audit_chain_head",
            "latest_checkpoint_seq",
        ]
    )
    head = report["audit_chain_head"]
    checkpoint = report["latest_checkpoint"] or {}
    for control in report["controls"]:
        writer.writerow(
            [
                _cell(report["framework"]["name"]),
                _cell(control["id"]),
                _cell(control["title"]),
                _cell(";".join(control["lifecycle_phases"])),
                _cell(control["status"]),
                _cell(control["figure"]),
                _cell(";".join(control["checks"])),
                control["offender_count"],
                report["computed_at"],
                head["seq"],
                head["hash"],
                checkpoint.get("seq", ""),
            ]
        )
    return out.getvalue().encode("utf-8")


def render_json(report: dict[str, Any]) -> bytes:
    return (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# --- PDF ------------------------------------------------------------------------------------------

STATUS_COLOURS = {
    PASS: "#d8f0dd",
    WARN: "#fdf0c8",
    FAIL: "#f8d4d2",
    NOT_APPLICABLE: "#e8eaed",
    NOT_ASSESSED: "#ffffff",
}


def render_pdf(report: dict[str, Any]) -> bytes:
    """A4 report: what it was computed against, the summary, every control, then each check's evidence."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    small = ParagraphStyle("small", parent=styles["BodyText"], fontSize=7.5, leading=9)
    body = ParagraphStyle("body", parent=styles["BodyText"], fontSize=9, leading=11)
    # Control ids stay whole (164.308(a)(1)(ii)(D) is one word to a reader and to a search).
    ident = ParagraphStyle("ident", parent=small, splitLongWords=0)

    def p(text: Any, style: ParagraphStyle = small) -> Paragraph:
        return Paragraph(escape(str(text)), style)

    framework = report["framework"]["name"]
    head = report["audit_chain_head"]
    checkpoint = report["latest_checkpoint"]
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=14 * mm,
        rightMargin=14 * mm,
        topMargin=14 * mm,
        bottomMargin=14 * mm,
        title=f"{framework} compliance report",
        author="KMS lifecycle console",
        subject=f"Computed {_when(report['computed_at'])}",
    )
    story: list[Any] = [
        Paragraph(escape(f"{framework} - compliance report"), styles["Title"]),
        Paragraph(escape("Computed from live evidence by the KMS lifecycle console."), body),
        Spacer(1, 4 * mm),
    ]
    facts = [
        ["Computed at", _when(report["computed_at"])],
        ["Console", report["console"]],
        ["Audit chain head", f"#{head['seq']} {head['hash']}"],
        [
            "Latest signed checkpoint",
            f"#{checkpoint['seq']} signed {checkpoint['signed_at']} over {checkpoint['head_hash']}"
            if checkpoint
            else "none yet",
        ],
        [
            "Summary",
            ", ".join(f"{report['summary'][s]} {STATUS_LABELS[s].lower()}" for s in CONTROL_STATUSES)
            + f" ({report['summary']['total']} controls)",
        ],
    ]
    fact_table = Table([[p(k, body), p(v)] for k, v in facts], colWidths=[42 * mm, 140 * mm])
    fact_table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("BOTTOMPADDING", (0, 0), (-1, -1), 2)]))
    story += [fact_table, Spacer(1, 5 * mm), Paragraph("Controls", styles["Heading2"])]

    rows = [[p("Control"), p("Title"), p("Phases"), p("Status"), p("Evidence")]]
    table_style = [
        ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#9aa0a6")),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dfe3e8")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]
    for index, control in enumerate(report["controls"], start=1):
        rows.append(
            [
                p(control["id"], ident),
                p(control["short_title"] or control["title"]),
                p(", ".join(control["lifecycle_phases"]).replace("_", " ")),
                p(STATUS_LABELS[control["status"]]),
                p(control["figure"]),
            ]
        )
        table_style.append(("BACKGROUND", (3, index), (3, index), colors.HexColor(STATUS_COLOURS[control["status"]])))
    controls_table = Table(rows, colWidths=[33 * mm, 42 * mm, 24 * mm, 20 * mm, 63 * mm], repeatRows=1)
    controls_table.setStyle(TableStyle(table_style))
    story += [controls_table, Spacer(1, 5 * mm), Paragraph("Evidence checks", styles["Heading2"])]

    for check in report["checks"]:
        story.append(Paragraph(escape(f"{check['title']} - {STATUS_LABELS[check['status']]}"), styles["Heading4"]))
        story.append(p(check["description"], body))
        story.append(p(f"Result: {check['figure']}", body))
        story.append(p(f"Serves: {', '.join(check['controls'])}", small))
        for note in check["notes"]:
            story.append(p(note, small))
        for offender in check["offenders"]:
            story.append(p(f"- {offender['kind']} {offender['label']}: {offender['reason']}", small))
        hidden = check["offender_count"] - len(check["offenders"])
        if hidden > 0:
            story.append(p(f"... and {hidden} more", small))
        story.append(Spacer(1, 2 * mm))

    def footer(canvas: Any, document: Any) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.drawString(
            14 * mm, 8 * mm, f"{framework} - computed {_when(report['computed_at'])} - chain head #{head['seq']}"
        )
        canvas.drawRightString(A4[0] - 14 * mm, 8 * mm, f"page {document.page}")
        canvas.restoreState()

    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()


# --- OSCAL assessment results ---------------------------------------------------------------------

_TOKEN_BAD = re.compile(r"[^A-Za-z0-9.\-]+")
_ENHANCEMENT = re.compile(r"\((\d+)\)")


def oscal_control_id(framework_slug: str, control_id: str) -> str:
    """A control id as an OSCAL token (letters first; no spaces or parentheses).

    NIST SP 800-53 controls take NIST's own OSCAL catalog form (SC-12(1) -> sc-12.1); other
    frameworks are prefixed with their slug (3.7.6 -> pci-dss_3.7.6, 164.312(b) -> hipaa_164.312_b).
    """
    if framework_slug == "nist-800-53":
        return _ENHANCEMENT.sub(r".\1", control_id).lower()
    cleaned = _TOKEN_BAD.sub("_", control_id).strip("_")
    return f"{framework_slug}_{cleaned}"


def _prop(name: str, value: Any) -> dict[str, str]:
    return {"name": name, "ns": OSCAL_NS, "value": str(value) if str(value).strip() else "-"}


def _finding_status(status: str) -> dict[str, str]:
    if status == PASS:
        return {"state": "satisfied", "reason": "pass"}
    if status == NOT_APPLICABLE:
        return {"state": "satisfied", "reason": "other", "remarks": "Nothing the check applies to exists yet."}
    if status == FAIL:
        return {"state": "not-satisfied", "reason": "fail"}
    if status == WARN:
        return {"state": "not-satisfied", "reason": "other", "remarks": "Warnings: see the related observations."}
    return {
        "state": "not-satisfied",
        "reason": "other",
        "remarks": "Not assessed automatically: this control needs a manual assessment.",
    }


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "-"


def _absolute(url: str) -> str:
    return url if url.startswith(("http://", "https://")) else f"{settings.PUBLIC_URL}{url}"


def build_oscal(report: dict[str, Any]) -> dict[str, Any]:
    """An OSCAL assessment-results document: one result, an observation per check, a finding per control."""
    slug = report["framework"]["slug"]
    computed_at = report["computed_at"]
    head = report["audit_chain_head"]
    checkpoint = report["latest_checkpoint"]
    observation_ids = {check["id"]: str(uuid.uuid4()) for check in report["checks"]}
    observations = []
    for check in report["checks"]:
        observation: dict[str, Any] = {
            "uuid": observation_ids[check["id"]],
            "title": _one_line(check["title"]),
            "description": f"{check['figure']}. {check['description']}",
            "props": [_prop("check-id", check["id"]), _prop("check-status", check["status"])],
            "methods": ["TEST"],
            "types": ["control-objective" if check["status"] in (PASS, NOT_APPLICABLE) else "finding"],
            "origins": [{"actors": [{"type": "tool", "actor-uuid": TOOL_UUID}]}],
            "collected": computed_at,
        }
        evidence = [
            {
                "description": f"{o['kind']} {o['label']}: {o['reason']}",
                **({"href": _absolute(o["url"])} if o["url"] else {}),
                "props": [_prop("severity", o["severity"])],
            }
            for o in check["offenders"]
        ]
        if evidence:
            observation["relevant-evidence"] = evidence
        if check["notes"]:
            observation["remarks"] = " ".join(check["notes"])
        observations.append(observation)
    findings = []
    for control in report["controls"]:
        token = oscal_control_id(slug, control["id"])
        finding: dict[str, Any] = {
            "uuid": str(uuid.uuid4()),
            "title": _one_line(f"{control['id']} {control['short_title'] or control['title']}"),
            "description": control["figure"],
            "props": [_prop("control-label", control["id"]), _prop("kms-status", control["status"])],
            "origins": [{"actors": [{"type": "tool", "actor-uuid": TOOL_UUID}]}],
            "target": {
                "type": "objective-id",
                "target-id": token,
                "title": _one_line(control["title"]),
                "status": _finding_status(control["status"]),
            },
        }
        related = [{"observation-uuid": observation_ids[c]} for c in control["checks"] if c in observation_ids]
        if related:
            finding["related-observations"] = related
        findings.append(finding)
    checkpoint_text = f"#{checkpoint['seq']} ({checkpoint['head_hash']})" if checkpoint else "none"
    result: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "title": f"Automated evidence checks against {report['framework']['name']}",
        "description": (
            "Statuses computed from live data of the KMS lifecycle console: keys, versions and policies, "
            "approval requests and decisions, users and roles, the audit trail and the HSM inventory."
        ),
        "start": computed_at,
        "end": computed_at,
        "props": [
            _prop("framework", report["framework"]["name"]),
            _prop("audit-chain-seq", head["seq"]),
            _prop("audit-chain-head", head["hash"]),
            _prop("latest-checkpoint", checkpoint_text),
        ],
        "local-definitions": {
            "components": [
                {
                    "uuid": TOOL_UUID,
                    "type": "software",
                    "title": "KMS lifecycle console evidence checks",
                    "description": "The compliance evidence checks built into the KMS lifecycle console.",
                    "status": {"state": "operational"},
                }
            ]
        },
        "reviewed-controls": {
            "control-selections": [
                {"include-controls": [{"control-id": oscal_control_id(slug, c["id"])} for c in report["controls"]]}
            ]
        },
        "findings": findings,
    }
    if observations:
        result["observations"] = observations
    return {
        "assessment-results": {
            "uuid": str(uuid.uuid4()),
            "metadata": {
                "title": f"{report['framework']['name']} assessment results - KMS lifecycle console",
                "last-modified": computed_at,
                "version": computed_at,
                "oscal-version": OSCAL_VERSION,
                "props": [
                    _prop("audit-chain-seq", head["seq"]),
                    _prop("audit-chain-head", head["hash"]),
                    _prop("latest-checkpoint", checkpoint_text),
                ],
                "remarks": (
                    "Control summaries in the console's catalog are paraphrases, not the standards' text. "
                    f"Computed at {computed_at} against audit chain head #{head['seq']}."
                ),
            },
            "import-ap": {
                "href": f"{settings.PUBLIC_URL}/compliance/{slug}/",
                "remarks": "No separate assessment plan: the console's evidence checks define what is tested.",
            },
            "results": [result],
        }
    }


def render_oscal(report: dict[str, Any]) -> bytes:
    return (json.dumps(build_oscal(report), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


FORMATS: dict[str, Format] = {
    "csv": Format("csv", "csv", "text/csv; charset=utf-8", render_csv),
    "json": Format("json", "json", "application/json", render_json),
    "pdf": Format("pdf", "pdf", "application/pdf", render_pdf),
    "oscal": Format("oscal", "oscal.json", "application/json", render_oscal),
}


def get_format(value: Any) -> Format:
    name = value.strip().lower() if isinstance(value, str) else ""
    if name not in FORMATS:
        choices = ", ".join(FORMATS)
        raise ApplicationError(
            f"format must be one of {choices}.",
            code="invalid_format",
            details={"format": [f"Choose one of {choices}."]},
        )
    return FORMATS[name]


def _when(iso: str) -> str:
    """An ISO time of the report as people read it in the PDF ("2026-12-04 09:00:00 UTC")."""
    try:
        parsed = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return f"{parsed.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"
