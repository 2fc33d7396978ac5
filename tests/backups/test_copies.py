"""Every HSM that holds a version's material is known: a restore into another HSM records the copy it
leaves behind, destruction destroys and confirms absence on every one and certifies them all, an HSM
holding a copy is not retired, and the compliance checks agree."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from audit.models import AuditEvent
from compliance.checks.base import FAIL, WARN
from kms_console.lib.errors import Conflict
from lifecycle.hsm import default_backend
from lifecycle.models import CopyEnd, Hsm, Job, JobStatus, Key, KeyVersion, Restore, RestoreState, VersionCopy
from lifecycle.services.jobs import run_job
from lifecycle.services.policies import hsm_retire
from lifecycle.states import KeyState
from tests.backups.conftest import back_up, enter, jobs_held_back, open_restore
from tests.compliance.helpers import run
from tests.lifecycle.helpers import generate_key, make_policy, run_operation

pytestmark = pytest.mark.django_db


@pytest.fixture
def data_key(cast: SimpleNamespace, clock: Any, escrow: Any) -> Key:
    make_policy("quick", destruction_wait_days=0)
    return generate_key(cast.alice, cast.approvers, clock, name="payments", policy="quick")


def restore_into(
    key: Key, cast: SimpleNamespace, clock: Any, shares: dict[str, str], hsm: str | None = None, backup: Any = None
) -> Restore:
    backup = backup or back_up(key, cast, clock)
    req = open_restore(key, backup, cast, clock, **({"hsm": hsm} if hsm else {}))
    restore = Restore.objects.get(request=req)
    enter(restore.pk, cast.bob, shares["bob"], clock)
    enter(restore.pk, cast.carol, shares["carol"], clock)
    restore.refresh_from_db()
    return restore


def test_a_restore_into_another_hsm_records_the_copy_the_old_hsm_keeps(
    cast: SimpleNamespace, clock: Any, data_key: Key, shares: dict[str, str], other_hsm: Hsm, kms: Any
) -> None:
    version = data_key.primary_version
    restore = restore_into(data_key, cast, clock, shares, hsm="other")
    assert restore.state == RestoreState.RESTORED
    version.refresh_from_db()
    assert version.hsm == other_hsm
    copy = VersionCopy.objects.get(version=version)
    assert (copy.hsm, copy.seen_present, copy.restore, copy.is_live) == (kms.hsm, True, restore, True)
    event = AuditEvent.objects.filter(action="backup.restored").latest("seq")
    assert event.details["copy_left_on"] == kms.hsm.name
    assert event.details["from_hsm"] == kms.hsm.name and event.details["hsm"] == "other"


def test_no_copy_is_recorded_where_the_object_was_confirmed_gone(
    cast: SimpleNamespace, clock: Any, data_key: Key, shares: dict[str, str], other_hsm: Hsm
) -> None:
    version = data_key.primary_version
    backup = back_up(data_key, cast, clock)
    default_backend().destroy(version.cka_id_bytes)
    restore_into(data_key, cast, clock, shares, hsm="other", backup=backup)
    assert not VersionCopy.objects.filter(version=version).exists()
    event = AuditEvent.objects.filter(action="backup.restored").latest("seq")
    assert event.details["copy_left_on"] is None


def test_destruction_reaches_every_copy_and_the_certificate_lists_them(
    cast: SimpleNamespace, clock: Any, data_key: Key, shares: dict[str, str], other_hsm: Hsm, kms: Any
) -> None:
    version = data_key.primary_version
    restore_into(data_key, cast, clock, shares, hsm="other")
    assert default_backend().exists(version.cka_id_bytes) and other_hsm.backend().exists(version.cka_id_bytes)

    run_operation("schedule_destruction", data_key, cast.alice, cast.approvers, clock)
    data_key.refresh_from_db()
    assert data_key.state == KeyState.DESTROYED
    assert not default_backend().exists(version.cka_id_bytes)
    assert not other_hsm.backend().exists(version.cka_id_bytes)
    (entry,) = data_key.destruction_certificate.body["versions"]
    assert entry["hsm"] == "other" and entry["confirmed_absent"] is True
    assert [(c["hsm"], c["confirmed_absent"]) for c in entry["copies"]] == [(kms.hsm.name, True)]
    assert "every HSM recorded as holding a copy" in data_key.destruction_certificate.body["hsm_confirmation"]
    copy = VersionCopy.objects.get(version=version)
    assert copy.ended_at is not None and copy.end == CopyEnd.DESTROYED
    assert run("destruction").status != FAIL


def test_an_hsm_holding_a_copy_is_not_retired_until_the_version_is_destroyed(
    cast: SimpleNamespace, clock: Any, data_key: Key, shares: dict[str, str], other_hsm: Hsm, kms: Any
) -> None:
    version = data_key.primary_version
    backup = back_up(data_key, cast, clock)
    restore_into(data_key, cast, clock, shares, hsm="other", backup=backup)
    # And back again: the default HSM is the version's home once more, the other keeps a copy.
    back = restore_into(data_key, cast, clock, shares, hsm=kms.hsm.name, backup=backup)
    assert back.state == RestoreState.RESTORED, (back.state, back.error)
    version.refresh_from_db()
    assert version.hsm == kms.hsm
    rows = {(c.hsm.name, c.end) for c in VersionCopy.objects.filter(version=version).select_related("hsm")}
    assert rows == {(kms.hsm.name, CopyEnd.PRIMARY), ("other", "")}

    with pytest.raises(Conflict, match=r"still holds copies of key versions .*payments v1") as excinfo:
        hsm_retire(hsm=other_hsm, actor=cast.olivia)
    assert excinfo.value.code == "hsm_in_use"
    other_hsm.refresh_from_db()
    assert other_hsm.retired_at is None

    run_operation("schedule_destruction", data_key, cast.alice, cast.approvers, clock)
    assert not other_hsm.backend().exists(version.cka_id_bytes)
    assert hsm_retire(hsm=other_hsm, actor=cast.olivia).retired_at is not None
    # Decommissioned afterwards: the destruction check no longer asks the retired HSM.
    Hsm.objects.filter(pk=other_hsm.pk).update(token_label="decommissioned")
    destruction = run("destruction")
    assert destruction.status != FAIL, [o.reason for o in destruction.offenders]


def test_the_inventory_check_warns_of_a_recorded_copy_and_fails_an_unrecorded_one(
    cast: SimpleNamespace, clock: Any, data_key: Key, shares: dict[str, str], other_hsm: Hsm, kms: Any
) -> None:
    version = data_key.primary_version
    restore_into(data_key, cast, clock, shares, hsm="other")

    def copy_offender() -> Any:
        result = run("hsm_inventory")
        (offender,) = [
            o for o in result.offenders if o.label.startswith(f"{kms.hsm.name}: ") and "payments" in o.reason
        ]
        return offender

    recorded = copy_offender()
    assert recorded.severity == WARN and "a copy of payments v1" in recorded.reason
    VersionCopy.objects.filter(version=version).delete()  # as if the restore had not recorded it
    unrecorded = copy_offender()
    assert unrecorded.severity == FAIL and "not recorded as a copy" in unrecorded.reason


def test_a_version_destroyed_while_its_restore_ran_keeps_nothing_on_the_target(
    cast: SimpleNamespace, clock: Any, data_key: Key, shares: dict[str, str], other_hsm: Hsm, monkeypatch: Any
) -> None:
    version = data_key.primary_version
    backup = back_up(data_key, cast, clock)
    req = open_restore(data_key, backup, cast, clock, hsm="other")
    restore = Restore.objects.get(request=req)
    with jobs_held_back(monkeypatch):
        enter(restore.pk, cast.bob, shares["bob"], clock)
        enter(restore.pk, cast.carol, shares["carol"], clock)
    job = Job.objects.get(kind="restore", params__restore_id=str(restore.pk))
    # The unwrap happens on the token; before the worker records it, the key is destroyed.
    from lifecycle.backups import jobs as backup_jobs

    real_attempt = backup_jobs._restore_attempt

    def destroy_meanwhile(job: Job, restore: Restore) -> dict[str, Any]:
        result = real_attempt(job, restore)
        run_operation("schedule_destruction", data_key, cast.alice, cast.approvers, clock)
        return result

    monkeypatch.setattr(backup_jobs, "_restore_attempt", destroy_meanwhile)
    run_job(job.pk)
    job.refresh_from_db()
    version.refresh_from_db()
    assert version.state == KeyState.DESTROYED
    assert job.status != JobStatus.SUCCEEDED
    assert "destroyed while it was being restored" in job.error
    assert not other_hsm.backend().exists(version.cka_id_bytes)
    assert KeyVersion.objects.get(pk=version.pk).hsm != other_hsm


@pytest.mark.parametrize("wait_days", [0, 7])
def test_a_redelivered_restore_of_a_version_now_destroyed_or_scheduled_leaves_nothing_unrecorded(
    cast: SimpleNamespace,
    clock: Any,
    escrow: Any,
    shares: dict[str, str],
    other_hsm: Hsm,
    monkeypatch: Any,
    wait_days: int,
) -> None:
    from lifecycle.backups import jobs as backup_jobs
    from tests.lifecycle.helpers import wait_out_destruction

    make_policy("waiting", destruction_wait_days=wait_days)
    key = generate_key(cast.alice, cast.approvers, clock, name="payments", policy="waiting")
    version = key.primary_version
    backup = back_up(key, cast, clock)
    req = open_restore(key, backup, cast, clock, hsm="other")
    restore = Restore.objects.get(request=req)
    with jobs_held_back(monkeypatch):
        enter(restore.pk, cast.bob, shares["bob"], clock)
        enter(restore.pk, cast.carol, shares["carol"], clock)
    job = Job.objects.get(kind="restore", params__restore_id=str(restore.pk))
    # The first delivery unwraps the key onto the other HSM, and the worker dies before recording it.
    backup_jobs._restore_attempt(job, Restore.objects.select_related("target_hsm").get(pk=restore.pk))
    assert other_hsm.backend().exists(version.cka_id_bytes)
    run_operation("schedule_destruction", key, cast.alice, cast.approvers, clock)
    key.refresh_from_db()
    assert key.state == (KeyState.DESTROYED if wait_days == 0 else KeyState.ACTIVE)

    run_job(job.pk)  # the redelivery
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "scheduled for destruction" in job.error
    restore.refresh_from_db()
    assert restore.state == RestoreState.FAILED
    version.refresh_from_db()
    assert version.hsm != other_hsm
    if wait_days == 0:
        # Destroyed already: the stray object is destroyed at once.
        assert not other_hsm.backend().exists(version.cka_id_bytes)
        assert not VersionCopy.objects.filter(version=version).exists()
        return
    # Only scheduled: nothing is destroyed early, the object is recorded as a copy...
    copy = VersionCopy.objects.get(version=version, ended_at__isnull=True)
    assert copy.hsm == other_hsm and copy.restore == restore
    assert AuditEvent.objects.filter(action="restore.copy_recorded").exists()
    # ...which the destruction then reaches and certifies.
    wait_out_destruction(key, clock)
    assert key.state == KeyState.DESTROYED
    assert not other_hsm.backend().exists(version.cka_id_bytes)
    assert not default_backend().exists(version.cka_id_bytes)
    (entry,) = key.destruction_certificate.body["versions"]
    assert [c["hsm"] for c in entry["copies"]] == ["other"]


def test_an_hsm_a_restore_is_on_its_way_to_is_not_retired(
    cast: SimpleNamespace, clock: Any, data_key: Key, escrow: Any, other_hsm: Hsm
) -> None:
    backup = back_up(data_key, cast, clock)
    req = open_restore(data_key, backup, cast, clock, hsm="other")
    assert Restore.objects.get(request=req).state == RestoreState.COLLECTING
    with pytest.raises(Conflict, match="A restore into HSM other is in progress") as excinfo:
        hsm_retire(hsm=other_hsm, actor=cast.olivia)
    assert excinfo.value.code == "hsm_in_use"


def test_one_restore_of_a_version_at_a_time(cast: SimpleNamespace, clock: Any, data_key: Key, other_hsm: Hsm) -> None:
    from approvals.services import open_request

    backup = back_up(data_key, cast, clock)
    first = open_restore(data_key, backup, cast, clock, hsm="other")
    assert Restore.objects.get(request=first).state == RestoreState.COLLECTING
    with pytest.raises(Conflict) as refused:
        open_request(
            operation="restore",
            requester=cast.alice,
            justification="a second one at once",
            target_id=str(data_key.pk),
            parameters={"backup": str(backup.pk)},
        )
    assert refused.value.code == "restore_in_progress"


def test_a_stray_object_is_destroyed_when_the_destruction_commits_while_it_is_being_recorded(
    cast: SimpleNamespace, clock: Any, escrow: Any, shares: dict[str, str], other_hsm: Hsm, monkeypatch: Any
) -> None:
    from lifecycle.backups import jobs as backup_jobs
    from lifecycle.backups import restore as restore_module
    from tests.lifecycle.helpers import wait_out_destruction

    make_policy("waiting", destruction_wait_days=7)
    key = generate_key(cast.alice, cast.approvers, clock, name="payments", policy="waiting")
    version = key.primary_version
    backup = back_up(key, cast, clock)
    req = open_restore(key, backup, cast, clock, hsm="other")
    restore = Restore.objects.get(request=req)
    with jobs_held_back(monkeypatch):
        enter(restore.pk, cast.bob, shares["bob"], clock)
        enter(restore.pk, cast.carol, shares["carol"], clock)
    job = Job.objects.get(kind="restore", params__restore_id=str(restore.pk))
    backup_jobs._restore_attempt(job, Restore.objects.select_related("target_hsm").get(pk=restore.pk))
    run_operation("schedule_destruction", key, cast.alice, cast.approvers, clock)
    real = restore_module.record_stray_copy

    def destruction_commits_first(restore: Restore, version: KeyVersion) -> bool:
        wait_out_destruction(key, clock)  # the job saw "scheduled"; now it is destroyed
        return real(restore, version)

    monkeypatch.setattr(backup_jobs, "record_stray_copy", destruction_commits_first)
    run_job(job.pk)  # the redelivery
    key.refresh_from_db()
    assert key.state == KeyState.DESTROYED
    assert not other_hsm.backend().exists(version.cka_id_bytes)
    assert not VersionCopy.objects.filter(version=version, ended_at__isnull=True).exists()
