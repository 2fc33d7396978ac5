"""Daily snapshots (beat), the trend chart they feed, and the kms_compliance command."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command

from audit.models import AuditEvent
from compliance import services, tasks
from compliance.assessment import assess, framework_controls
from compliance.checks.base import Context
from compliance.models import Framework, Snapshot, SnapshotFramework
from kms_console.celery import app
from lifecycle.models import KeyVersion
from tests.conftest import web_client
from tests.lifecycle.helpers import generate_key

from .helpers import clean_token, orm_key, run

pytestmark = pytest.mark.django_db


def test_a_snapshot_records_every_check_and_each_frameworks_counts(clock: Any, cast: Any) -> None:
    orm_key("stale", kms=cast.kms, owner=cast.alice, now=clock.now(), activated_days_ago=800)

    snapshot, created = services.take_snapshot()

    assert created
    assert snapshot.day == dt.date(2026, 12, 4)
    assert snapshot.checks["cryptoperiod"] == {
        "status": "fail",
        "figure": "0 of 1 active keys inside their cryptoperiod",
        "offenders": 1,
    }
    rows = {row.framework.slug: row for row in snapshot.frameworks.select_related("framework")}
    assert set(rows) == {"pci-dss", "hipaa", "nist-800-53", "nist-800-57"}
    pci = Framework.objects.get(slug="pci-dss")
    live = assess().framework(pci, framework_controls(pci))
    assert (rows["pci-dss"].failed, rows["pci-dss"].not_assessed) == (live.counts["fail"], live.counts["not_assessed"])
    assert rows["pci-dss"].controls["3.7.4"] == "fail"
    assert (
        sum([rows["hipaa"].passed, rows["hipaa"].warned, rows["hipaa"].failed])
        + rows["hipaa"].not_applicable
        + (rows["hipaa"].not_assessed)
        == 13
    )
    event = AuditEvent.objects.get(action="compliance.snapshot_taken")
    assert event.details["day"] == "2026-12-04"
    assert event.details["frameworks"]["pci-dss"]["fail"] == live.counts["fail"]


def test_taking_the_snapshot_twice_a_day_changes_nothing(clock: Any, cast: Any) -> None:
    first, _ = services.take_snapshot()
    clock.advance(hours=5)
    again, created = services.take_snapshot()

    assert not created
    assert again.pk == first.pk
    assert Snapshot.objects.count() == 1
    assert AuditEvent.objects.filter(action="compliance.snapshot_taken").count() == 1

    clock.advance(days=1)
    _, created = services.take_snapshot()
    assert created
    assert Snapshot.objects.count() == 2


def test_beat_runs_the_snapshot_task(clock: Any, cast: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["compliance-snapshot"]
    assert entry["task"] == tasks.take_snapshot.name == "compliance.tasks.take_snapshot"
    assert entry["task"] in app.tasks

    snapshot_id = tasks.take_snapshot.delay().get()

    assert Snapshot.objects.get().pk == snapshot_id
    assert AuditEvent.objects.get(action="compliance.snapshot_taken").via == "beat"


def test_the_snapshot_compares_the_key_check_value_of_every_version(clock: Any, cast: Any) -> None:
    clean_token(cast.kms)
    key = generate_key(cast.alice, [cast.bob, cast.carol], clock, name="watched")
    KeyVersion.objects.filter(pk=key.primary_version.pk).update(kcv="000000")

    # A page view compares a window of versions (here: none); the nightly snapshot compares all of them.
    assert run("hsm_inventory", kcv_sample=0).status == "pass"
    snapshot, _ = services.take_snapshot()
    assert snapshot.checks["hsm_inventory"]["status"] == "fail"


def test_the_kcv_window_moves_every_day_and_covers_all_versions() -> None:
    versions = [SimpleNamespace(cka_id=f"{i:02x}") for i in range(5)]
    seen: set[str] = set()
    for day in range(3):
        ctx = Context(now=dt.datetime(2026, 12, 4 + day, tzinfo=dt.UTC), kcv_sample=2)
        window = ctx.kcv_window(versions)
        assert len(window) == 2
        seen |= {v.cka_id for v in window}
    assert seen == {v.cka_id for v in versions}
    assert len(Context(kcv_sample=None).kcv_window(versions)) == 5


def test_the_trend_chart_draws_one_column_per_snapshot_day(clock: Any, cast: Any) -> None:
    client = web_client(cast.erin)
    assert b"No snapshots yet" in client.get("/compliance/pci-dss/").content
    for _ in range(3):
        services.take_snapshot()
        clock.advance(days=1)

    # Sessions last 8 hours: sign in again after the days went by.
    html = web_client(cast.erin).get("/compliance/pci-dss/").content.decode()

    chart = html[html.index('class="chart compliance-trend"') :]
    chart = chart[: chart.index("</svg>")]
    assert chart.count("<title>2026-12-04:") >= 1
    assert chart.count("<title>2026-12-06:") >= 1
    assert "2026-12-04</text>" in chart and "2026-12-06</text>" in chart
    assert SnapshotFramework.objects.filter(framework__slug="pci-dss").count() == 3


def test_the_command_takes_a_snapshot_and_prints_the_status(clock: Any, cast: Any, capsys: Any) -> None:
    call_command("kms_compliance", "snapshot")
    assert "Took the snapshot of 2026-12-04" in capsys.readouterr().out
    call_command("kms_compliance", "snapshot")
    assert "Already had the snapshot of 2026-12-04" in capsys.readouterr().out

    call_command("kms_compliance", "status")
    out = capsys.readouterr().out
    assert out.startswith("PCI DSS 4.0.1: ")
    assert "HIPAA: " in out

    call_command("kms_compliance", "status", "--framework", "nist-800-57")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("NIST SP 800-57: ")
    assert len(lines) == 1 + 6
