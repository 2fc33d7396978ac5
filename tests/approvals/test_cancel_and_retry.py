"""Requester and custodian actions: cancel a pending request (requester only); retry a failed execution
(a custodian), which runs the same job - the same CKA_ID - and never twice."""

from __future__ import annotations

from typing import Any

import pytest

from approvals.models import RequestState
from approvals.services import cancel, decide, open_request, retry
from audit.models import AuditEvent
from kms_console.lib.errors import Conflict, Forbidden, NotFound
from lifecycle.hsm import HsmOperationError, Pkcs11Backend
from lifecycle.models import Job, JobStatus, Key, KeyVersion
from lifecycle.states import KeyState
from tests.approvals.helpers import open_generation
from tests.conftest import approve, fresh_otp, make_user
from tests.lifecycle.helpers import on_commit, token_objects

pytestmark = pytest.mark.django_db


def test_the_requester_cancels_a_pending_request(pending: Any, alice: Any, bob: Any, clock: Any) -> None:
    decide(request_id=pending.pk, approver=bob, decision="approve", otp=fresh_otp(bob, clock), digest=pending.digest)
    cancelled = cancel(request_id=pending.pk, actor=alice)
    assert (cancelled.state, cancelled.finished_at) == (RequestState.CANCELLED, clock.now())
    assert AuditEvent.objects.get(action="request.cancelled", target_id=str(pending.pk)).actor == "alice"
    # The name is free again: a new request for the same key can be opened.
    assert open_generation(alice).state == RequestState.PENDING


@pytest.mark.parametrize("who", ["bob", "olivia", "other_admin", "root"])
def test_nobody_but_the_requester_can_cancel(pending: Any, bob: Any, olivia: Any, who: str) -> None:
    actor = {"bob": bob, "olivia": olivia}.get(who)
    if actor is None:
        actor = make_user(who, {"key_admin"})
        if who == "root":
            actor.is_superuser = True
            actor.save()
    with pytest.raises(Forbidden) as excinfo:
        cancel(request_id=pending.pk, actor=actor)
    assert excinfo.value.code == "not_requester"
    pending.refresh_from_db()
    assert pending.state == RequestState.PENDING


def test_only_pending_requests_can_be_cancelled(pending: Any, alice: Any, bob: Any, clock: Any) -> None:
    decide(request_id=pending.pk, approver=bob, decision="reject", otp=fresh_otp(bob, clock), comment="no")
    with pytest.raises(Conflict, match="only pending requests can be cancelled"):
        cancel(request_id=pending.pk, actor=alice)
    with pytest.raises(NotFound):
        cancel(request_id="00000000-0000-0000-0000-000000000000", actor=alice)


def failed_generation(cast: Any, clock: Any, monkeypatch: Any) -> Any:
    """An approved generation whose HSM job failed for good (the token refused the mechanism)."""

    def refuses(self: Pkcs11Backend, *args: Any, **kwargs: Any) -> Any:
        raise HsmOperationError("token 'kms-test' refused the operation (MechanismInvalid)")

    with monkeypatch.context() as patch:
        patch.setattr(Pkcs11Backend, "generate", refuses)
        with on_commit():
            req = open_generation(cast.alice)
            approve(req, cast.bob, cast.carol, clock=clock)
    req.refresh_from_db()
    assert req.state == RequestState.FAILED
    return req


def test_a_custodian_retries_a_failed_execution_and_the_same_job_makes_the_key(
    cast: Any, clock: Any, monkeypatch: Any
) -> None:
    req = failed_generation(cast, clock, monkeypatch)
    job = Job.objects.get(request=req)
    cka_id = job.version.cka_id
    assert job.status == JobStatus.FAILED
    assert token_objects(cka_id) == []

    with on_commit():
        retried = retry(request_id=req.pk, actor=cast.dave)
    assert retried.execution_count == 2
    req.refresh_from_db()
    job.refresh_from_db()
    assert (req.state, req.error) == (RequestState.EXECUTED, "")
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 2)
    assert Job.objects.filter(request=req).count() == 1  # the same job, not a new one
    assert list(KeyVersion.objects.values_list("cka_id", flat=True)) == [cka_id]  # the same CKA_ID
    assert token_objects(cka_id) == ["secret_key"]
    assert Key.objects.get().state == KeyState.ACTIVE
    assert AuditEvent.objects.get(action="request.retry", target_id=str(req.pk)).actor == "dave"

    with pytest.raises(Conflict, match="only failed requests can be retried"):  # never twice
        retry(request_id=req.pk, actor=cast.bob)
    assert token_objects(cka_id) == ["secret_key"]


@pytest.mark.parametrize("who", ["alice", "olivia", "erin", "root"])
def test_only_a_custodian_can_retry(cast: Any, clock: Any, monkeypatch: Any, who: str) -> None:
    req = failed_generation(cast, clock, monkeypatch)
    actor = getattr(cast, who, None)
    if actor is None:
        actor = make_user("root", {"key_admin"})
        actor.is_superuser = True
        actor.save()
    with pytest.raises(Forbidden):
        retry(request_id=req.pk, actor=actor)
    req.refresh_from_db()
    assert (req.state, req.execution_count) == (RequestState.FAILED, 1)


def test_a_retry_after_the_cause_persists_fails_again_without_a_second_object(
    cast: Any, clock: Any, monkeypatch: Any
) -> None:
    req = failed_generation(cast, clock, monkeypatch)

    def refuses(self: Pkcs11Backend, *args: Any, **kwargs: Any) -> Any:
        raise HsmOperationError("token 'kms-test' refused the operation (MechanismInvalid)")

    monkeypatch.setattr(Pkcs11Backend, "generate", refuses)
    with on_commit():
        retry(request_id=req.pk, actor=cast.dave)
    req.refresh_from_db()
    assert (req.state, req.execution_count) == (RequestState.FAILED, 2)
    assert Job.objects.filter(request=req).count() == 1
    assert KeyVersion.objects.count() == 1


def test_a_failed_state_change_is_retried_by_running_it_again(cast: Any, clock: Any) -> None:
    from tests.lifecycle.helpers import generate_key, run_operation

    key = generate_key(cast.alice, cast.approvers, clock, activate_at=None)
    activation = open_request(operation="activate", requester=cast.alice, justification="go", target_id=str(key.pk))
    run_operation("compromise", key, cast.bob, [], clock)
    activation = approve(activation, cast.carol, clock=clock)
    assert activation.state == RequestState.FAILED
    # Retrying cannot make a compromised key active: the state machine refuses again.
    retry(request_id=activation.pk, actor=cast.dave)
    activation.refresh_from_db()
    assert (activation.state, activation.execution_count) == (RequestState.FAILED, 2)
    key.refresh_from_db()
    assert key.state == KeyState.COMPROMISED


def test_a_retry_long_after_the_approval_is_refused(cast: Any, clock: Any, monkeypatch: Any) -> None:
    req = failed_generation(cast, clock, monkeypatch)
    clock.advance(days=8)
    with pytest.raises(Conflict) as excinfo:
        retry(request_id=req.pk, actor=cast.dave)
    assert excinfo.value.code == "retry_too_late"
    req.refresh_from_db()
    assert (req.state, req.execution_count) == (RequestState.FAILED, 1)


def test_a_retry_is_refused_when_an_approver_no_longer_stands(cast: Any, clock: Any, monkeypatch: Any) -> None:
    from django.contrib.auth.models import Group

    req = failed_generation(cast, clock, monkeypatch)
    cast.carol.groups.remove(Group.objects.get(name="custodian"))  # carol is a custodian no more
    with pytest.raises(Conflict) as excinfo:
        retry(request_id=req.pk, actor=cast.dave)
    assert excinfo.value.code == "approvals_lapsed"
    assert Job.objects.get(request=req).attempts == 1


def test_an_approval_from_someone_who_lost_the_role_does_not_count(cast: Any, clock: Any) -> None:
    from django.contrib.auth.models import Group

    req = open_generation(cast.alice)
    decide(request_id=req.pk, approver=cast.bob, decision="approve", otp=fresh_otp(cast.bob, clock), digest=req.digest)
    cast.bob.groups.remove(Group.objects.get(name="custodian"))  # bob leaves the custodians
    decide(
        request_id=req.pk, approver=cast.carol, decision="approve", otp=fresh_otp(cast.carol, clock), digest=req.digest
    )
    req.refresh_from_db()
    assert req.state == RequestState.PENDING  # 1 standing approval of 2
    decide(
        request_id=req.pk, approver=cast.dave, decision="approve", otp=fresh_otp(cast.dave, clock), digest=req.digest
    )
    req.refresh_from_db()
    assert req.state != RequestState.PENDING
