"""Reports: CSV (one row per control), JSON, PDF (lists every control) and OSCAL (validates), all audited."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from trestle.oscal.assessment_results import AssessmentResults

from audit.models import AuditEvent
from audit.services import chain_head, sign_checkpoint
from compliance import services
from compliance.models import Control, Framework
from compliance.reports import oscal_control_id

from .helpers import orm_key, pdf_text

pytestmark = pytest.mark.django_db

FRAMEWORKS = ["pci-dss", "hipaa", "nist-800-53", "nist-800-57"]


@pytest.fixture
def estate(clock: Any, cast: Any) -> Any:
    """A small estate with one key past its cryptoperiod, so the reports carry a failure and an offender."""
    now = clock.now()
    orm_key("payments", kms=cast.kms, owner=cast.alice, now=now)
    orm_key("stale", kms=cast.kms, owner=cast.alice, now=now, activated_days_ago=800)
    sign_checkpoint()
    return cast


def export(slug: str, fmt: str, actor: Any) -> Any:
    return services.export_report(framework=Framework.objects.get(slug=slug), fmt=fmt, actor=actor)


def control_ids(slug: str) -> list[str]:
    return list(Control.objects.filter(framework__slug=slug).order_by("position").values_list("control_id", flat=True))


@pytest.mark.parametrize("slug", FRAMEWORKS)
def test_the_csv_has_one_row_per_control(estate: Any, slug: str) -> None:
    seq, head = chain_head()
    exported = export(slug, "csv", estate.erin)

    rows = list(csv.DictReader(io.StringIO(exported.content.decode())))

    assert exported.content_type == "text/csv; charset=utf-8"
    assert [row["control_id"] for row in rows] == control_ids(slug)
    assert {row["audit_chain_seq"] for row in rows} == {str(seq)}
    assert {row["audit_chain_head"] for row in rows} == {head}
    assert {row["computed_at"] for row in rows} == {exported.report["computed_at"]}
    assert all(row["status"] in {"pass", "warn", "fail", "not_applicable", "not_assessed"} for row in rows)


def test_the_csv_row_of_a_control_carries_its_status_and_figure(estate: Any) -> None:
    rows = {
        r["control_id"]: r for r in csv.DictReader(io.StringIO(export("pci-dss", "csv", estate.erin).content.decode()))
    }
    assert rows["3.7.4"]["status"] == "fail"
    assert rows["3.7.4"]["figure"].startswith("1 of 2 active keys inside their cryptoperiod")
    assert rows["3.7.4"]["checks"] == "cryptoperiod;rotation;originator_period"
    assert rows["3.5.1"]["status"] == "not_assessed"


def test_the_json_report_names_when_and_against_what_it_was_computed(estate: Any) -> None:
    seq, head = chain_head()
    exported = export("hipaa", "json", estate.erin)

    report = json.loads(exported.content)

    assert report["framework"] == {"slug": "hipaa", "name": "HIPAA"}
    assert report["audit_chain_head"] == {"seq": seq, "hash": head}
    assert report["latest_checkpoint"]["seq"] == seq
    assert report["computed_at"] == exported.report["computed_at"]
    assert [c["id"] for c in report["controls"]] == control_ids("hipaa")
    assert report["summary"]["total"] == 13
    assert sum(report["summary"][s] for s in ("pass", "warn", "fail", "not_applicable", "not_assessed")) == 13
    check = next(c for c in report["checks"] if c["id"] == "mfa")
    assert check["controls"] == ["164.312(d)"]


@pytest.mark.parametrize("slug", FRAMEWORKS)
def test_the_pdf_opens_and_lists_every_control(estate: Any, slug: str) -> None:
    seq, head = chain_head()
    exported = export(slug, "pdf", estate.erin)

    text = pdf_text(exported.content)

    assert exported.content_type == "application/pdf"
    lines = set(text.splitlines())
    missing = [control_id for control_id in control_ids(slug) if control_id not in lines]
    assert not missing, f"the PDF does not list {missing}"
    assert f"#{seq} {head}" in text
    assert exported.report["computed_at"] in text
    assert "Latest signed checkpoint" in text


def test_the_pdf_names_the_offending_objects(estate: Any) -> None:
    text = pdf_text(export("pci-dss", "pdf", estate.erin).content)
    assert "- key stale: version 1's originator-usage period ended on 2026-09-25" in text


@pytest.mark.parametrize("slug", FRAMEWORKS)
def test_the_oscal_output_validates_against_the_assessment_results_schema(estate: Any, slug: str) -> None:
    exported = export(slug, "oscal", estate.erin)
    document = json.loads(exported.content)

    # compliance-trestle's models are generated from NIST's published OSCAL JSON schema.
    results = AssessmentResults.model_validate(document["assessment-results"])

    [result] = results.results
    expected = [oscal_control_id(slug, c) for c in control_ids(slug)]
    [selection] = result.reviewed_controls.control_selections
    assert [c.control_id for c in selection.include_controls] == expected
    assert [f.target.target_id for f in result.findings] == expected
    assert len({f.uuid for f in result.findings}) == len(expected)
    props = {p.name: p.value for p in results.metadata.props}
    assert props["audit-chain-seq"] == str(exported.report["audit_chain_head"]["seq"])
    assert props["audit-chain-head"] == exported.report["audit_chain_head"]["hash"]


def test_oscal_findings_carry_the_status_and_link_to_their_observations(estate: Any) -> None:
    document = json.loads(export("pci-dss", "oscal", estate.erin).content)
    result = document["assessment-results"]["results"][0]
    findings = {f["target"]["target-id"]: f for f in result["findings"]}
    observations = {o["uuid"]: o for o in result["observations"]}

    failing = findings["pci-dss_3.7.4"]
    assert failing["target"]["status"] == {"state": "not-satisfied", "reason": "fail"}
    linked = [observations[r["observation-uuid"]] for r in failing["related-observations"]]
    assert linked[0]["title"] == "Active keys inside their cryptoperiod"
    evidence = linked[0]["relevant-evidence"]
    assert evidence[0]["description"].startswith("key stale: version 1's originator-usage period ended")
    assert evidence[0]["href"].startswith("http://") and "/keys/" in evidence[0]["href"]
    assert findings["pci-dss_3.5.1"]["target"]["status"]["reason"] == "other"
    assert "Not assessed automatically" in findings["pci-dss_3.5.1"]["target"]["status"]["remarks"]


@pytest.mark.parametrize(
    ("control_id", "slug", "token"),
    [
        ("SC-12(1)", "nist-800-53", "sc-12.1"),
        ("AU-9(3)", "nist-800-53", "au-9.3"),
        ("164.312(a)(2)(iv)", "hipaa", "hipaa_164.312_a_2_iv"),
        ("3.7.6", "pci-dss", "pci-dss_3.7.6"),
        ("pt1r5-8.2.2", "nist-800-57", "nist-800-57_pt1r5-8.2.2"),
    ],
)
def test_control_ids_become_oscal_tokens(control_id: str, slug: str, token: str) -> None:
    assert oscal_control_id(slug, control_id) == token


@pytest.mark.parametrize("fmt", ["csv", "json", "pdf", "oscal"])
def test_every_export_is_an_audit_event_with_the_file_digest(estate: Any, fmt: str) -> None:
    seq_before, head_before = chain_head()
    exported = export("nist-800-57", fmt, estate.olivia)

    event = AuditEvent.objects.get(action="compliance.report_exported")
    assert event.actor == "olivia"
    assert event.target_id == "nist-800-57"
    assert event.details["format"] == fmt
    assert event.details["sha256"] == hashlib.sha256(exported.content).hexdigest()
    assert event.details["chain_seq"] == seq_before
    assert event.details["chain_head"] == head_before
    assert event.seq == seq_before + 1


def test_kms_report_writes_the_file_and_records_the_export(estate: Any, tmp_path: Path, capsys: Any) -> None:
    target = tmp_path / "pci.pdf"

    call_command("kms_report", "--framework", "pci-dss", "--format", "pdf", "-o", str(target))

    data = target.read_bytes()
    assert data.startswith(b"%PDF-")
    assert "Wrote" in capsys.readouterr().err
    event = AuditEvent.objects.get(action="compliance.report_exported")
    assert (event.via, event.actor, event.details["format"]) == ("cli", "system", "pdf")
    assert event.details["sha256"] == hashlib.sha256(data).hexdigest()


def test_kms_report_writes_to_standard_output(estate: Any, capsysbinary: Any) -> None:
    call_command("kms_report", "--framework", "HIPAA", "--format", "oscal", "-o", "-")
    document = json.loads(capsysbinary.readouterr().out)
    uuid.UUID(document["assessment-results"]["uuid"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--framework", "sox", "--format", "csv", "-o", "out.csv"], "No framework named 'sox'"),
        (["--framework", "pci-dss", "--format", "xlsx", "-o", "out.csv"], "invalid choice: 'xlsx'"),
        (["--framework", "pci-dss", "--format", "csv", "-o", "/no/such/dir/out.csv"], "does not exist"),
    ],
)
def test_kms_report_refuses_bad_input_without_exporting(estate: Any, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("kms_report", *args)
    assert not AuditEvent.objects.filter(action="compliance.report_exported").exists()
