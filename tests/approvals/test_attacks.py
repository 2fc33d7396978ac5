"""Issue 4, the attack catalogue: every way around dual control is refused, and no refusal changes
the request's state or its decisions."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import responsibilities
from accounts.models import Acknowledgement
from approvals.models import ApprovalRequest, Decision, RequestState
from approvals.services import cancel, decide, expire_overdue, mark_executed, open_request, retry
from audit.models import AuditEvent
from kms_console.lib.errors import Conflict, Forbidden
from lifecycle.models import Job, Key, KeyVersion
from tests.approvals.helpers import attempt, open_generation, refused, snapshot
from tests.conftest import approve, fresh_otp, make_user, otp_code
from tests.lifecycle.helpers import on_commit

pytestmark = pytest.mark.django_db


# --- Who may decide -------------------------------------------------------------------------------


def test_a_requester_who_is_also_a_custodian_cannot_approve_or_reject_their_own_request(clock: Any, kms: Any) -> None:
    frank = make_user("frank", {"key_admin", "custodian"})
    req = open_generation(frank)
    with refused(req, Forbidden, "self_approval"):
        attempt(req, frank, clock)
    with refused(req, Forbidden, "self_approval"):
        attempt(req, frank, clock, decision="reject", comment="I changed my mind")


def test_a_second_decision_by_the_same_person_is_refused(pending: Any, bob: Any, clock: Any) -> None:
    attempt(pending, bob, clock)
    with refused(pending, Conflict, "already_decided"):
        attempt(pending, bob, clock)
    with refused(pending, Conflict, "already_decided"):
        attempt(pending, bob, clock, decision="reject", comment="second thoughts")
    assert pending.decisions.count() == 1


@pytest.mark.parametrize("name", ["erin", "kate", "olivia", "svc", "mallory"])
def test_auditors_key_admins_officers_service_accounts_and_outsiders_cannot_approve(
    pending: Any, clock: Any, erin: Any, olivia: Any, svc: Any, mallory: Any, name: str
) -> None:
    who = {"erin": erin, "olivia": olivia, "svc": svc, "mallory": mallory}.get(name) or make_user(name, {"key_admin"})
    if not TOTPDevice.objects.filter(user=who).exists():  # svc: give it a device, it still may not approve
        TOTPDevice.objects.create(user=who, name="authenticator", key="3132333435363738393031323334353637383930")
    with refused(pending, Forbidden, "not_eligible"):
        attempt(pending, who, clock)


def test_an_auditor_holding_the_custodian_group_as_well_still_cannot_approve(
    pending: Any, erin: Any, clock: Any
) -> None:
    # The role rules forbid auditor + custodian; should the groups say so anyway, auditor wins.
    erin.groups.add(Group.objects.get_or_create(name="custodian")[0])
    Acknowledgement.objects.create(
        user=erin,
        text_version=responsibilities.VERSION,
        text_digest=responsibilities.DIGEST,
        acknowledged_at=timezone.now(),
    )
    erin = type(erin).objects.get(pk=erin.pk)
    with refused(pending, Forbidden, "not_eligible"):
        attempt(pending, erin, clock)


def test_a_custodian_who_never_acknowledged_cannot_approve(pending: Any, clock: Any) -> None:
    newcomer = make_user("nick", {"custodian"}, acknowledged=False)
    with refused(pending, Forbidden, "not_eligible"):
        attempt(pending, newcomer, clock)


def test_an_acknowledgement_older_than_twelve_months_no_longer_counts(alice: Any, clock: Any, kms: Any) -> None:
    veteran = make_user("vera", {"custodian"})  # acknowledged now (the frozen clock's start)
    make_user("bob")
    clock.advance(days=365, seconds=-1)
    req = open_generation(alice, "still-valid")
    attempt(req, veteran, clock)  # one second before the year is over: still current
    assert req.decisions.count() == 1

    clock.advance(seconds=2)
    req = open_generation(alice, "lapsed")
    with refused(req, Forbidden, "not_eligible"):
        attempt(req, veteran, clock)


def test_an_acknowledgement_of_an_older_text_version_no_longer_counts(pending: Any, clock: Any) -> None:
    old_hand = make_user("otto", {"custodian"}, acknowledged=False)
    Acknowledgement.objects.create(
        user=old_hand, text_version="2025.1", text_digest="0" * 64, acknowledged_at=timezone.now()
    )
    with refused(pending, Forbidden, "not_eligible"):
        attempt(pending, old_hand, clock)


def test_a_custodian_without_a_confirmed_totp_device_cannot_approve(pending: Any, clock: Any) -> None:
    no_device = make_user("nora", {"custodian"}, totp=False)
    with refused(pending, Forbidden, "not_eligible"):
        decide(request_id=pending.pk, approver=no_device, decision="approve", otp="123456", digest=pending.digest)
    TOTPDevice.objects.create(
        user=no_device, name="unconfirmed", key="3132333435363738393031323334353637383930", confirmed=False
    )
    with refused(pending, Forbidden, "not_eligible"):
        decide(request_id=pending.pk, approver=no_device, decision="approve", otp="123456", digest=pending.digest)


def test_a_disabled_custodian_cannot_approve(pending: Any, bob: Any, clock: Any) -> None:
    bob.is_active = False
    bob.save()
    with refused(pending, Forbidden, "not_eligible"):
        attempt(pending, bob, clock)


# --- The one-time password -----------------------------------------------------------------------


def wrong_code(user: Any) -> str:
    return f"{(int(otp_code(user)) + 1) % 1_000_000:06d}"


@pytest.mark.parametrize(
    "code",
    ["wrong", None, "", "12345", "1234567", "abcdef", "12345a", "fullwidth", "123456; --", " ", "+12345"],
)
def test_wrong_missing_and_malformed_codes_are_refused(pending: Any, bob: Any, clock: Any, code: Any) -> None:
    otp = {
        "wrong": wrong_code(bob),
        # The right code in fullwidth digits: Python's int() reads it as the same number.
        "fullwidth": "".join(chr(ord(c) + 0xFEE0) for c in otp_code(bob)),
    }.get(code, code)
    with refused(pending, Forbidden, "otp_invalid"):
        attempt(pending, bob, clock, otp=otp)
    failure = AuditEvent.objects.filter(action="otp.failed", target_id=str(bob.pk)).get()
    assert failure.details["purpose"] == f"approve request {pending.pk}"
    assert set(failure.details) == {"purpose", "throttled_until"}  # the code itself is never recorded


def test_a_replayed_code_is_refused(alice: Any, bob: Any, clock: Any) -> None:
    first = open_generation(alice, "first")
    second = open_generation(alice, "second")
    code = fresh_otp(bob, clock)
    decide(request_id=first.pk, approver=bob, decision="approve", otp=code, digest=first.digest)
    with refused(second, Forbidden, "otp_invalid"):  # the same code again, in the same time step
        decide(request_id=second.pk, approver=bob, decision="approve", otp=code, digest=second.digest)
    # A code from the next time step works.
    clock.advance(seconds=30)
    decide(request_id=second.pk, approver=bob, decision="approve", otp=otp_code(bob), digest=second.digest)


def test_after_a_wrong_code_even_the_right_one_is_refused_until_the_throttle_delay_passed(
    pending: Any, bob: Any, clock: Any
) -> None:
    right = fresh_otp(bob, clock)
    with refused(pending, Forbidden, "otp_invalid"):
        attempt(pending, bob, clock, otp=wrong_code(bob))
    with refused(pending, Forbidden, "otp_invalid"):  # throttled: one second after one failure
        attempt(pending, bob, clock, otp=right)
    clock.advance(seconds=1.1)
    with refused(pending, Forbidden, "otp_invalid"):  # a second failure doubles the delay
        attempt(pending, bob, clock, otp=wrong_code(bob))
    clock.advance(seconds=1.5)
    with refused(pending, Forbidden, "otp_invalid"):  # 1.5 s < 2 s
        attempt(pending, bob, clock, otp=right)
    clock.advance(seconds=1)
    attempt(pending, bob, clock, otp=otp_code(bob))
    assert pending.decisions.get().approver == bob
    device = TOTPDevice.objects.get(user=bob)
    assert device.throttling_failure_count == 0  # reset by the accepted code


# --- What is being approved ------------------------------------------------------------------------


@pytest.mark.parametrize("quoted", ["other", "altered", "missing", "empty"])
def test_a_quoted_digest_that_does_not_match_is_refused(
    pending: Any, alice: Any, bob: Any, clock: Any, quoted: str
) -> None:
    digest = {
        "other": open_generation(alice, "other").digest,
        "altered": pending.digest[:-1] + ("0" if pending.digest[-1] != "0" else "1"),
        "missing": None,
        "empty": "",
    }[quoted]
    with refused(pending, Conflict, "digest_mismatch"):
        attempt(pending, bob, clock, digest=digest)


def test_a_rejection_quoting_a_wrong_digest_is_refused_too(pending: Any, bob: Any, clock: Any) -> None:
    with refused(pending, Conflict, "digest_mismatch"):
        attempt(pending, bob, clock, decision="reject", comment="no", digest="f" * 64)


def test_the_digest_binds_the_parameters(pending: Any) -> None:
    from approvals.services import request_digest

    assert request_digest(pending) == pending.digest
    pending.parameters = {**pending.parameters, "algorithm": "AES-128"}
    assert request_digest(pending) != pending.digest


# --- Requests that no longer take decisions --------------------------------------------------------


def test_a_request_past_its_deadline_expires_instead_of_taking_the_decision(pending: Any, bob: Any, clock: Any) -> None:
    clock.advance(hours=72, seconds=1)
    with pytest.raises(Conflict) as excinfo:
        attempt(pending, bob, clock)
    assert excinfo.value.code == "request_expired"
    pending.refresh_from_db()
    assert pending.state == RequestState.EXPIRED  # what the sweep would have done; no decision was recorded
    assert pending.decisions.count() == 0


@pytest.mark.parametrize("state", ["expired", "cancelled", "rejected", "executed"])
def test_approving_a_finished_request_is_refused(
    pending: Any, alice: Any, bob: Any, carol: Any, dave: Any, clock: Any, state: str
) -> None:
    if state == "expired":
        clock.advance(hours=73)
        assert expire_overdue() == 1
    elif state == "cancelled":
        cancel(request_id=pending.pk, actor=alice)
    elif state == "rejected":
        attempt(pending, bob, clock, decision="reject", comment="not needed")
    else:
        with on_commit():
            approve(pending, bob, carol, clock=clock)
    pending.refresh_from_db()
    assert pending.state == state
    with refused(pending, Conflict, f"request_{state}"):
        attempt(pending, dave, clock)


# --- Superusers ---------------------------------------------------------------------------------------


def superuser(name: str, roles: set[str]) -> Any:
    user = make_user(name, roles, totp=True)
    user.is_superuser = user.is_staff = True
    user.save()
    return type(user).objects.get(pk=user.pk)


def test_a_superuser_without_roles_can_neither_request_nor_approve(pending: Any, clock: Any) -> None:
    root = superuser("root", set())
    with pytest.raises(Forbidden) as excinfo:
        open_generation(root, "root-key")
    assert excinfo.value.code == "role_required"
    with refused(pending, Forbidden, "not_eligible"):
        attempt(pending, root, clock)


def test_a_superuser_custodian_cannot_approve_their_own_request(clock: Any, kms: Any, bob: Any) -> None:
    root = superuser("root", {"key_admin", "custodian"})
    req = open_generation(root, "root-key")
    with refused(req, Forbidden, "self_approval"):
        attempt(req, root, clock)
    attempt(req, bob, clock)  # one approval of the two
    with refused(req, Forbidden, "self_approval"):
        attempt(req, root, clock)
    req.refresh_from_db()
    assert req.state == RequestState.PENDING


def test_no_service_executes_a_request_without_its_approvals(pending: Any, alice: Any, bob: Any, clock: Any) -> None:
    root = superuser("root", {"custodian"})
    before = snapshot(pending)
    with pytest.raises(Conflict, match="only failed requests can be retried"):
        retry(request_id=pending.pk, actor=root)
    mark_executed(pending.pk, {"forged": True})  # the worker's completion call: ignored unless executing
    with pytest.raises(Forbidden, match="Only the requester"):
        cancel(request_id=pending.pk, actor=root)
    assert snapshot(pending) == before
    assert not Key.objects.exists()
    assert not Job.objects.exists()


# --- The database itself -------------------------------------------------------------------------------


def test_the_database_refuses_a_decision_by_the_requester(pending: Any, alice: Any) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Decision.objects.create(
            request=pending,
            approver=alice,
            requester=alice,
            decision="approve",
            digest=pending.digest,
            otp_device="otp_totp.totpdevice/1",
            decided_at=timezone.now(),
        )
    assert pending.decisions.count() == 0


def test_the_database_refuses_a_second_decision_by_the_same_approver(pending: Any, alice: Any, bob: Any) -> None:
    fields = {
        "request": pending,
        "approver": bob,
        "requester": alice,
        "digest": pending.digest,
        "otp_device": "otp_totp.totpdevice/2",
        "decided_at": timezone.now(),
    }
    Decision.objects.create(decision="approve", **fields)
    with pytest.raises(IntegrityError), transaction.atomic():
        Decision.objects.create(decision="reject", **fields)
    assert pending.decisions.count() == 1


def test_the_database_refuses_a_second_pending_request_for_the_same_operation_on_a_key(
    alice: Any, bob: Any, carol: Any, clock: Any
) -> None:
    from tests.lifecycle.helpers import generate_key

    key = generate_key(alice, [bob, carol], clock)
    open_request(operation="rotate", requester=alice, justification="once", target_id=str(key.pk))
    with pytest.raises(Conflict) as excinfo:
        open_request(operation="rotate", requester=alice, justification="twice", target_id=str(key.pk))
    assert excinfo.value.code == "request_pending"
    assert ApprovalRequest.objects.filter(operation="rotate", state="pending").count() == 1


# --- Redelivery --------------------------------------------------------------------------------------


def test_a_redelivered_execution_never_runs_the_step_twice(pending: Any, bob: Any, carol: Any, clock: Any) -> None:
    from lifecycle.services import jobs
    from lifecycle.tasks import run_job

    with on_commit():
        approve(pending, bob, carol, clock=clock)
    pending.refresh_from_db()
    job = Job.objects.get(request=pending)
    for _ in range(2):
        run_job.apply(args=[str(job.pk)])
        jobs.run_job(job.pk)
    mark_executed(pending.pk)
    pending.refresh_from_db()
    job.refresh_from_db()
    assert (pending.state, pending.execution_count) == (RequestState.EXECUTED, 1)
    assert (job.attempts, Job.objects.filter(request=pending).count()) == (1, 1)
    assert KeyVersion.objects.count() == 1
    assert AuditEvent.objects.filter(action="request.executed", target_id=str(pending.pk)).count() == 1


def test_decisions_record_the_verified_device_and_the_digest(pending: Any, bob: Any, clock: Any) -> None:
    attempt(pending, bob, clock, comment="checked the ticket")
    decision = pending.decisions.get()
    device = TOTPDevice.objects.get(user=bob)
    assert (decision.otp_device, decision.digest, decision.comment) == (
        device.persistent_id,
        pending.digest,
        "checked the ticket",
    )
    assert decision.decided_at == clock.now()
    assert decision.approver_roles == ["custodian"]
    assert isinstance(decision.decided_at, dt.datetime)
