"""The control catalog: loaded by the migration, re-loaded by the command, and mapped to the checks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from compliance.assessment import assess
from compliance.catalog import CatalogError, parse_catalog
from compliance.checks import CHECKS
from compliance.checks.base import NOT_ASSESSED
from compliance.mapping import CHECK_CONTROLS
from compliance.models import Control, Framework

pytestmark = pytest.mark.django_db


def catalog_file() -> dict[str, Any]:
    return yaml.safe_load(Path(settings.KMS_CONTROLS_FILE).read_text())


def test_the_migration_loads_every_control_of_the_catalog() -> None:
    entries = catalog_file()["controls"]
    assert Control.objects.count() == len(entries) == 80
    assert list(Framework.objects.values_list("slug", "name")) == [
        ("pci-dss", "PCI DSS 4.0.1"),
        ("hipaa", "HIPAA"),
        ("nist-800-53", "NIST SP 800-53r5"),
        ("nist-800-57", "NIST SP 800-57"),
    ]
    counts = {fw.slug: fw.controls.count() for fw in Framework.objects.all()}
    assert counts == {"pci-dss": 33, "hipaa": 13, "nist-800-53": 28, "nist-800-57": 6}
    control = Control.objects.get(framework__slug="pci-dss", control_id="3.7.6")
    source = next(e for e in entries if e["framework"] == "PCI DSS 4.0.1" and e["id"] == "3.7.6")
    assert control.title == source["title"]
    assert control.lifecycle_phases == source["lifecycle_phases"]
    assert control.evidence == source["evidence"]
    assert control.summary == source["summary"]


def test_every_mapped_control_exists_and_every_check_is_mapped() -> None:
    known = {f"{e['framework']}:{e['id']}" for e in catalog_file()["controls"]}
    assert set(CHECK_CONTROLS) == {check.id for check in CHECKS}
    for check_id, controls in CHECK_CONTROLS.items():
        assert controls, check_id
        missing = set(controls) - known
        assert not missing, f"{check_id} maps to controls the catalog lacks: {missing}"


def test_a_control_without_a_check_is_not_assessed_automatically(kms: Any) -> None:
    control = Control.objects.select_related("framework").get(framework__slug="pci-dss", control_id="3.5.1")
    row = assess().control(control)
    assert row.status == NOT_ASSESSED
    assert "Not assessed automatically" in row.figure


def test_load_catalog_is_idempotent_and_audited(kms: Any, capsys: Any) -> None:
    call_command("kms_compliance", "load-catalog")
    assert "80 controls (0 new, 0 changed, 0 removed)" in capsys.readouterr().out
    event = AuditEvent.objects.filter(action="compliance.catalog_loaded").get()
    assert event.via == "cli"
    assert event.details["controls"] == 80
    assert len(event.details["sha256"]) == 64


def test_load_catalog_applies_changes_and_removals(kms: Any, tmp_path: Path, capsys: Any) -> None:
    data = catalog_file()
    data["controls"] = [c for c in data["controls"] if not (c["framework"] == "HIPAA" and c["id"] == "164.312(d)")]
    changed = next(c for c in data["controls"] if c["id"] == "3.7.8")
    changed["summary"] = "A new summary."
    path = tmp_path / "controls.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))

    call_command("kms_compliance", "load-catalog", "--file", str(path))

    assert "79 controls (0 new, 1 changed, 1 removed)" in capsys.readouterr().out
    assert Control.objects.get(control_id="3.7.8").summary == "A new summary."
    assert not Control.objects.filter(control_id="164.312(d)").exists()


def test_a_bad_catalog_is_refused_with_the_entry_named(kms: Any, tmp_path: Path) -> None:
    data = catalog_file()
    data["controls"][2]["lifecycle_phases"] = ["storage", "teleportation"]
    path = tmp_path / "controls.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(CommandError, match=re.escape("PCI DSS 4.0.1 3.6.1.1: unknown lifecycle phase")):
        call_command("kms_compliance", "load-catalog", "--file", str(path))
    # Nothing changed, nothing was recorded.
    assert Control.objects.count() == 80
    assert not AuditEvent.objects.filter(action="compliance.catalog_loaded").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not: [valid", "not valid YAML"),
        ("controls: []", "no 'controls' list"),
        ("controls:\n  - framework: X\n    id: '1'\n", "lacks title, lifecycle_phases, summary, evidence"),
        (
            "controls:\n"
            + "".join(
                "  - {framework: X, id: '1', title: t, lifecycle_phases: [usage], summary: s, evidence: [e]}\n"
                for _ in range(2)
            ),
            "appears twice",
        ),
    ],
)
def test_parse_catalog_explains_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_catalog(text)


def test_a_missing_catalog_file_is_a_clear_command_error(kms: Any, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="cannot read the catalog"):
        call_command("kms_compliance", "load-catalog", "--file", str(tmp_path / "absent.yaml"))
