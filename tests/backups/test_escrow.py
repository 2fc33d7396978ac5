"""The escrow ceremony: the backup KEK wrapped under a recovery key split M-of-N among named custodians."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest

from approvals.services import open_request
from audit.models import AuditEvent
from kms_console.lib.errors import ApplicationError
from lifecycle.backups import shares
from lifecycle.backups.escrow import (
    ceremony_for,
    current_ceremony,
    custody_gaps,
    expire_ceremonies,
    retrieve_share,
)
from lifecycle.backups.tasks import close_windows
from lifecycle.models import CeremonyState, EscrowCeremony, EscrowShare, Job
from lifecycle.services.jobs import run_job
from tests.backups.conftest import hold_escrow, take_shares
from tests.conftest import fresh_otp
from tests.lifecycle.helpers import generate_key

pytestmark = pytest.mark.django_db


def test_a_ceremony_splits_the_recovery_key_among_the_named_custodians(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony
) -> None:
    assert escrow.state == CeremonyState.DISTRIBUTING
    assert (escrow.threshold, escrow.share_count) == (2, 3)
    assert escrow.wrapped_kek and escrow.recovery_fingerprint
    rows = list(escrow.shares.order_by("index"))
    assert [r.holder.get_username() for r in rows] == ["bob", "carol", "dave"]
    assert all(len(r.fingerprint) == 64 and r.sealed and r.retrieved_at is None for r in rows)
    # Neither the job row nor the audit trail holds a share or the wrapped KEK.
    job = Job.objects.get(kind="escrow")
    assert set(job.result) == {"ceremony", "recovery_fingerprint", "fingerprints"}
    assert escrow.wrapped_kek not in str(list(AuditEvent.objects.values_list("details", flat=True)))


def test_each_custodian_takes_their_own_share_exactly_once(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony
) -> None:
    bob_share = escrow.shares.get(holder=cast.bob)
    text = retrieve_share(share_id=bob_share.pk, user=cast.bob, otp=fresh_otp(cast.bob, clock))
    parsed = shares.parse(text)
    assert parsed.ceremony_id == escrow.pk and parsed.index == bob_share.index
    assert parsed.fingerprint == bob_share.fingerprint
    bob_share.refresh_from_db()
    assert bob_share.retrieved_at is not None and bob_share.sealed == ""  # only the fingerprint is kept
    assert AuditEvent.objects.filter(action="escrow.share_handed_off", actor="bob").count() == 1

    with pytest.raises(ApplicationError) as again:
        retrieve_share(share_id=bob_share.pk, user=cast.bob, otp=fresh_otp(cast.bob, clock))
    assert again.value.code == "share_retrieved"
    with pytest.raises(ApplicationError) as other:
        retrieve_share(share_id=bob_share.pk, user=cast.carol, otp=fresh_otp(cast.carol, clock))
    assert other.value.code == "not_share_holder"
    carol_share = escrow.shares.get(holder=cast.carol)
    with pytest.raises(ApplicationError) as bad_otp:
        retrieve_share(share_id=carol_share.pk, user=cast.carol, otp="123456")
    assert bad_otp.value.code == "otp_invalid"
    carol_share.refresh_from_db()
    assert carol_share.retrieved_at is None and carol_share.sealed
    refusals = AuditEvent.objects.filter(action="escrow.share_refused").values_list("details__reason", flat=True)
    assert sorted(refusals) == ["not_share_holder", "otp_invalid", "share_retrieved"]


def test_the_ceremony_is_complete_when_every_share_was_handed_off(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony
) -> None:
    texts = take_shares(escrow, clock)
    assert len(set(texts.values())) == 3
    escrow.refresh_from_db()
    assert escrow.state == CeremonyState.COMPLETE
    assert set(escrow.shares.values_list("sealed", flat=True)) == {""}
    # Any two shares recombine the recovery key (checked against its fingerprint); one does not.
    parsed = [shares.parse(t) for t in texts.values()]
    for pair in ([parsed[0], parsed[1]], [parsed[1], parsed[2]], [parsed[0], parsed[2]]):
        assert shares.recovery_fingerprint(shares.combine(pair)) == escrow.recovery_fingerprint
    assert shares.recovery_fingerprint(shares.combine(parsed[:1])) != escrow.recovery_fingerprint


def test_a_new_ceremony_supersedes_the_old_one_and_answers_a_custody_gap(
    cast: SimpleNamespace, clock: Any, kek: Any, escrow: EscrowCeremony
) -> None:
    # dave leaves: his share is a custody gap on the dashboard.
    cast.dave.groups.set([])
    cast.dave._kms_roles = None
    assert [s.holder.get_username() for s in custody_gaps()] == ["dave"]

    newer = hold_escrow(kek, cast, clock, holders=("bob", "carol"), threshold=2)
    # Until every holder of the new ceremony has their share, the old one still recovers the KEK.
    escrow.refresh_from_db()
    assert escrow.state == CeremonyState.DISTRIBUTING and escrow.wrapped_kek
    assert current_ceremony() == newer  # neither is complete: the newest
    take_shares(newer, clock)
    escrow.refresh_from_db()
    assert escrow.state == CeremonyState.SUPERSEDED
    assert escrow.wrapped_kek == "" and set(escrow.shares.values_list("sealed", flat=True)) == {""}
    assert current_ceremony() == newer
    assert custody_gaps() == []
    complete = AuditEvent.objects.get(action="escrow.complete", details__ceremony=str(newer.pk))
    assert complete.details["superseded"] == [str(escrow.pk)]


def test_a_complete_ceremony_recovers_the_kek_while_a_newer_one_hands_off_and_outlives_its_failure(
    cast: SimpleNamespace, clock: Any, kek: Any, escrow: EscrowCeremony, settings: Any
) -> None:
    take_shares(escrow, clock)
    newer = hold_escrow(kek, cast, clock, holders=("bob", "carol"), threshold=2)
    assert current_ceremony() == escrow  # complete beats newer-but-still-handing-off
    assert ceremony_for(escrow.kek_version) == escrow
    clock.advance(hours=settings.KMS_ESCROW_SHARE_RETRIEVAL_HOURS, seconds=1)
    assert expire_ceremonies() == 1
    newer.refresh_from_db()
    escrow.refresh_from_db()
    assert newer.state == CeremonyState.FAILED
    assert escrow.state == CeremonyState.COMPLETE and escrow.wrapped_kek
    assert current_ceremony() == escrow


def test_a_redelivered_escrow_job_does_nothing_twice(cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony) -> None:
    job = Job.objects.get(kind="escrow")
    before = list(EscrowShare.objects.values_list("fingerprint", flat=True))
    run_job(job.pk)
    assert list(EscrowShare.objects.values_list("fingerprint", flat=True)) == before
    assert EscrowCeremony.objects.count() == 1


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"custodians": ["bob", "carol", "dave"], "threshold": 1}, "threshold"),
        ({"custodians": ["bob", "carol"], "threshold": 3}, "threshold"),
        ({"custodians": ["bob", "bob"], "threshold": 2}, "custodians"),
        ({"custodians": ["bob", "alice"], "threshold": 2}, "custodians"),
        ({"custodians": ["bob", "nobody"], "threshold": 2}, "custodians"),
        ({"custodians": "bob,carol", "threshold": 2}, "custodians"),
        ({"custodians": ["bob", "carol"], "threshold": 2, "pin": "1234"}, "pin"),
    ],
)
def test_bad_ceremony_parameters_are_refused(
    cast: SimpleNamespace, clock: Any, kek: Any, parameters: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApplicationError) as excinfo:
        open_request(
            operation="escrow", requester=cast.alice, justification="x", target_id=str(kek.pk), parameters=parameters
        )
    assert field in excinfo.value.details


def test_only_an_active_aes256_wrap_key_can_be_the_kek(cast: SimpleNamespace, clock: Any) -> None:
    data = generate_key(cast.alice, cast.approvers, clock, name="data")
    with pytest.raises(ApplicationError) as excinfo:
        open_request(
            operation="escrow",
            requester=cast.alice,
            justification="x",
            target_id=str(data.pk),
            parameters={"custodians": ["bob", "carol"], "threshold": 2},
        )
    assert excinfo.value.code == "not_a_kek"


def test_custodians_and_auditors_cannot_request_a_ceremony(cast: SimpleNamespace, clock: Any, kek: Any) -> None:
    for user in (cast.bob, cast.erin, cast.mallory):
        with pytest.raises(ApplicationError) as excinfo:
            open_request(
                operation="escrow",
                requester=user,
                justification="x",
                target_id=str(kek.pk),
                parameters={"custodians": ["bob", "carol"], "threshold": 2},
            )
        assert excinfo.value.code == "role_required"


# --- The deadline to take the shares --------------------------------------------------------------


def test_the_shares_must_be_taken_before_the_ceremonys_deadline(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony, settings: Any
) -> None:
    assert escrow.retrieve_by == escrow.distributed_at + dt.timedelta(hours=settings.KMS_ESCROW_SHARE_RETRIEVAL_HOURS)
    bob_share = escrow.shares.get(holder=cast.bob)
    retrieve_share(share_id=bob_share.pk, user=cast.bob, otp=fresh_otp(cast.bob, clock))
    # Before the deadline the beat leaves the ceremony alone.
    clock.advance(seconds=(escrow.retrieve_by - clock.now()).total_seconds() - 60)
    assert expire_ceremonies() == 0
    clock.advance(minutes=2)
    carol_share = escrow.shares.get(holder=cast.carol)
    with pytest.raises(ApplicationError) as late:
        retrieve_share(share_id=carol_share.pk, user=cast.carol, otp=fresh_otp(cast.carol, clock))
    assert late.value.code == "share_deadline_passed"
    escrow.refresh_from_db()
    assert escrow.state == CeremonyState.FAILED and escrow.ended_at is not None
    assert escrow.wrapped_kek == "" and set(escrow.shares.values_list("sealed", flat=True)) == {""}
    assert escrow.shares.get(holder=cast.bob).retrieved_at is not None  # what was handed off stays recorded
    failed = AuditEvent.objects.get(action="escrow.failed")
    assert [n["holder"] for n in failed.details["not_taken"]] == ["carol", "dave"]
    assert AuditEvent.objects.filter(action="escrow.share_refused", details__reason="share_deadline_passed").exists()
    # A failed ceremony cannot recover the KEK: a backup needs a new one.
    assert current_ceremony() is None
    assert expire_ceremonies() == 0  # nothing left to do, and nothing done twice


def test_the_beat_fails_a_ceremony_whose_shares_were_not_all_taken(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony, settings: Any
) -> None:
    clock.advance(hours=settings.KMS_ESCROW_SHARE_RETRIEVAL_HOURS, seconds=1)
    assert close_windows() == 1
    escrow.refresh_from_db()
    assert escrow.state == CeremonyState.FAILED
    assert set(escrow.shares.values_list("sealed", flat=True)) == {""}


def test_a_complete_ceremony_has_no_deadline_left(cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony) -> None:
    take_shares(escrow, clock)
    clock.advance(days=30)
    assert expire_ceremonies() == 0
    escrow.refresh_from_db()
    assert escrow.state == CeremonyState.COMPLETE


def test_the_deadline_follows_the_setting(cast: SimpleNamespace, clock: Any, kek: Any, settings: Any) -> None:
    settings.KMS_ESCROW_SHARE_RETRIEVAL_HOURS = 2
    ceremony = hold_escrow(kek, cast, clock)
    assert ceremony.retrieve_by - ceremony.distributed_at == dt.timedelta(hours=2)


def test_a_failing_restore_sweep_does_not_keep_escrow_shares_waiting(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony, settings: Any, monkeypatch: Any
) -> None:
    from lifecycle.backups import restore

    def broken(now: Any = None) -> int:
        raise RuntimeError("a broken restore")

    monkeypatch.setattr(restore, "expire_restores", broken)
    clock.advance(hours=settings.KMS_ESCROW_SHARE_RETRIEVAL_HOURS, seconds=1)
    assert close_windows() == 1
    escrow.refresh_from_db()
    assert escrow.state == CeremonyState.FAILED


def test_a_restore_collecting_shares_of_a_superseded_ceremony_ends_with_the_reason(
    cast: SimpleNamespace, clock: Any, kek: Any, escrow: EscrowCeremony
) -> None:
    from approvals.models import RequestState
    from lifecycle.models import Restore, RestoreState
    from tests.backups.conftest import back_up, enter, open_restore
    from tests.lifecycle.helpers import generate_key as make_key

    old_shares = take_shares(escrow, clock)
    key = make_key(cast.alice, cast.approvers, clock, name="payments")
    backup = back_up(key, cast, clock)
    newer = hold_escrow(kek, cast, clock, holders=("bob", "carol"), threshold=2)
    req = open_restore(key, backup, cast, clock)  # uses the complete (older) ceremony
    restore = Restore.objects.get(request=req)
    assert restore.ceremony_id == escrow.pk
    enter(restore.pk, cast.bob, old_shares["bob"], clock)
    take_shares(newer, clock)  # the newer one completes and supersedes the older
    restore.refresh_from_db()
    req.refresh_from_db()
    assert restore.state == RestoreState.FAILED and "superseded by a newer one" in restore.error
    assert set(restore.entered_shares.values_list("sealed", flat=True)) == {""}
    assert req.state == RequestState.FAILED and "superseded" in req.error
    with pytest.raises(ApplicationError):
        enter(restore.pk, cast.carol, old_shares["carol"], clock)


def test_a_retried_restore_does_not_run_on_a_ceremony_the_approvers_did_not_see(
    cast: SimpleNamespace, clock: Any, kek: Any, escrow: EscrowCeremony
) -> None:
    from approvals.models import RequestState
    from approvals.services import retry
    from lifecycle.models import Restore
    from tests.backups.conftest import back_up, open_restore
    from tests.lifecycle.helpers import generate_key as make_key

    take_shares(escrow, clock)
    key = make_key(cast.alice, cast.approvers, clock, name="payments")
    backup = back_up(key, cast, clock)
    req = open_restore(key, backup, cast, clock)
    newer = hold_escrow(kek, cast, clock, holders=("bob", "carol"), threshold=2)
    take_shares(newer, clock)  # supersedes: the restore fails
    req.refresh_from_db()
    assert req.state == RequestState.FAILED
    retry(request_id=req.pk, actor=cast.bob)
    req.refresh_from_db()
    assert req.state == RequestState.FAILED and "replaced by a newer one" in req.error
    assert Restore.objects.filter(request=req).count() == 1


def test_a_restore_whose_job_waits_when_its_ceremony_is_superseded_fails_with_that_reason(
    cast: SimpleNamespace, clock: Any, kek: Any, escrow: EscrowCeremony, monkeypatch: Any
) -> None:
    from approvals.models import RequestState
    from lifecycle.hsm import default_backend
    from lifecycle.models import Restore, RestoreState
    from tests.backups.conftest import back_up, enter, jobs_held_back, open_restore
    from tests.lifecycle.helpers import generate_key as make_key

    old_shares = take_shares(escrow, clock)
    key = make_key(cast.alice, cast.approvers, clock, name="payments")
    backup = back_up(key, cast, clock)
    default_backend().destroy(key.primary_version.cka_id_bytes)
    req = open_restore(key, backup, cast, clock)
    restore = Restore.objects.get(request=req)
    with jobs_held_back(monkeypatch):
        enter(restore.pk, cast.bob, old_shares["bob"], clock)
        enter(restore.pk, cast.carol, old_shares["carol"], clock)
    restore.refresh_from_db()
    assert restore.state == RestoreState.RESTORING
    newer = hold_escrow(kek, cast, clock, holders=("bob", "carol"), threshold=2)
    take_shares(newer, clock)  # supersedes the ceremony the queued job needs
    run_job(Job.objects.get(kind="restore", params__restore_id=str(restore.pk)).pk)
    restore.refresh_from_db()
    req.refresh_from_db()
    assert restore.state == RestoreState.FAILED and "was superseded by a newer one" in restore.error
    assert req.state == RequestState.FAILED and "was superseded by a newer one" in req.error


def test_restores_collecting_shares_of_a_ceremony_that_fails_end_with_it(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony, settings: Any
) -> None:
    from lifecycle.models import Restore, RestoreState
    from tests.backups.conftest import back_up, open_restore
    from tests.lifecycle.helpers import generate_key as make_key

    for holder in (cast.bob, cast.carol):  # dave never takes his
        retrieve_share(share_id=escrow.shares.get(holder=holder).pk, user=holder, otp=fresh_otp(holder, clock))
    key = make_key(cast.alice, cast.approvers, clock, name="payments")
    backup = back_up(key, cast, clock)
    restore = Restore.objects.get(request=open_restore(key, backup, cast, clock))
    assert restore.ceremony_id == escrow.pk
    clock.advance(hours=settings.KMS_ESCROW_SHARE_RETRIEVAL_HOURS)
    expire_ceremonies()
    restore.refresh_from_db()
    assert restore.state == RestoreState.FAILED and "failed (its shares were not all taken in time)" in restore.error
