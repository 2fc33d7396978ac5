"""Suspend and compromise act at once (quorum 0) and open a mandatory review request for custodians."""

from __future__ import annotations

from typing import Any

import pytest

from approvals.models import ApprovalRequest, RequestState
from approvals.services import decide, open_request
from audit.models import AuditEvent
from kms_console.lib.errors import Forbidden
from lifecycle.states import KeyState
from tests.conftest import approve, fresh_otp
from tests.lifecycle.helpers import generate_key, make_policy, quorum, run_operation

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("operation", "state"), [("suspend", KeyState.SUSPENDED), ("compromise", KeyState.COMPROMISED)]
)
def test_an_immediate_action_executes_at_once_and_opens_a_review(
    cast: Any, clock: Any, operation: str, state: str
) -> None:
    key = generate_key(cast.alice, cast.approvers, clock)
    req = run_operation(operation, key, cast.bob, [], clock, justification="the key leaked in a log")

    assert (req.required_approvals, req.state) == (0, RequestState.EXECUTED)
    assert req.decisions.count() == 0
    assert key.state == state
    review = ApprovalRequest.objects.get(review_of=req)
    assert (review.operation, review.state, review.required_approvals) == ("review", RequestState.PENDING, 1)
    assert (review.approver_roles, review.requester_id, review.target_id) == (["custodian"], cast.bob.pk, str(req.pk))
    assert "the key leaked in a log" in review.justification

    # The person who acted cannot review themselves; another custodian can.
    with pytest.raises(Forbidden):
        decide(
            request_id=review.pk,
            approver=cast.bob,
            decision="approve",
            otp=fresh_otp(cast.bob, clock),
            digest=review.digest,
        )
    review = approve(review, cast.carol, clock=clock)
    assert review.state == RequestState.EXECUTED
    assert AuditEvent.objects.filter(action="request.reviewed", target_id=str(req.pk)).count() == 1
    key.refresh_from_db()
    assert key.state == state  # the review records the after-the-fact check; it does not undo the action


def test_a_rejected_review_is_recorded_and_leaves_the_key_as_it_is(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock)
    req = run_operation("compromise", key, cast.alice, [], clock)
    review = ApprovalRequest.objects.get(review_of=req)
    decide(
        request_id=review.pk,
        approver=cast.dave,
        decision="reject",
        otp=fresh_otp(cast.dave, clock),
        comment="no evidence of a compromise was given",
    )
    review.refresh_from_db()
    assert review.state == RequestState.REJECTED
    key.refresh_from_db()
    assert key.state == KeyState.COMPROMISED


def test_nobody_can_open_a_review_by_hand(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock)
    req = run_operation("suspend", key, cast.alice, [], clock)
    for who in (cast.alice, cast.bob, cast.olivia):
        with pytest.raises(Forbidden):
            open_request(operation="review", requester=who, justification="mine", target_id=str(req.pk))


def test_a_policy_that_gives_suspend_a_quorum_approves_it_first_and_opens_no_review(cast: Any, clock: Any) -> None:
    make_policy("careful", quorum=quorum(suspend=1))
    key = generate_key(cast.alice, cast.approvers, clock, policy="careful")
    with_request = open_request(operation="suspend", requester=cast.alice, justification="x", target_id=str(key.pk))
    key.refresh_from_db()
    assert (with_request.state, key.state) == (RequestState.PENDING, KeyState.ACTIVE)
    approve(with_request, cast.bob, clock=clock)
    key.refresh_from_db()
    assert key.state == KeyState.SUSPENDED
    assert not ApprovalRequest.objects.filter(review_of=with_request).exists()


def test_who_may_act_at_once_is_limited_to_the_privileged_roles(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock)
    for outsider in (cast.erin, cast.mallory):
        with pytest.raises(Forbidden):
            open_request(operation="compromise", requester=outsider, justification="x", target_id=str(key.pk))
    key.refresh_from_db()
    assert key.state == KeyState.ACTIVE


def test_the_person_who_acted_cannot_cancel_the_mandatory_review(cast: Any, clock: Any) -> None:
    from approvals.services import cancel
    from kms_console.lib.errors import Conflict
    from tests.conftest import api_client, web_client

    key = generate_key(cast.alice, cast.approvers, clock)
    req = run_operation("suspend", key, cast.bob, [], clock)
    review = ApprovalRequest.objects.get(review_of=req)
    with pytest.raises(Conflict) as refused:
        cancel(request_id=review.pk, actor=cast.bob)
    assert refused.value.code == "review_not_cancellable"
    # Nor through the API or the console's POST route.
    response = api_client(cast.bob).post(f"/api/v1/requests/{review.pk}/cancel/")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "review_not_cancellable"
    web_client(cast.bob).post(f"/requests/{review.pk}/cancel/")
    review.refresh_from_db()
    assert review.state == RequestState.PENDING
    assert not AuditEvent.objects.filter(action="request.cancelled", target_id=str(review.pk)).exists()
    # Each attempt (service, API, console) is recorded.
    assert (
        AuditEvent.objects.filter(action="request.cancel_refused", target_id=str(review.pk), actor="bob").count() == 3
    )
