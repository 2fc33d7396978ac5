"""A policy change is itself dual-controlled: a lower quorum takes effect only once its own request is
approved, and requests opened before keep the quorum they were opened with."""

from __future__ import annotations

from typing import Any

import pytest

from approvals.models import RequestState
from approvals.services import open_request
from kms_console.lib.errors import ApplicationError, Conflict, Forbidden
from lifecycle.models import Policy
from tests.approvals.helpers import open_generation
from tests.conftest import approve
from tests.lifecycle.helpers import on_commit

pytestmark = pytest.mark.django_db


def lower_generate_quorum(olivia: Any) -> Any:
    current = Policy.objects.get(name="standard").current
    rule = {**current.quorum["generate"], "approvals": 1}
    return open_request(
        operation="policy_change",
        requester=olivia,
        justification="one approval is enough for generation",
        parameters={"name": "standard", "quorum": {"generate": rule}},
    )


def test_a_lower_quorum_applies_only_after_the_policy_change_is_approved(
    alice: Any, bob: Any, carol: Any, dave: Any, olivia: Any, clock: Any
) -> None:
    before = open_generation(alice, "before")
    change = lower_generate_quorum(olivia)
    assert change.required_approvals == 2  # the change itself needs the current rule's quorum
    during = open_generation(alice, "during")
    assert (before.required_approvals, during.required_approvals) == (2, 2)

    # One approval of the change is not enough: the policy stays as it was.
    change = approve(change, bob, clock=clock)
    assert change.state == RequestState.PENDING
    assert Policy.objects.get(name="standard").current.number == 1
    assert open_generation(alice, "still-two").required_approvals == 2

    with on_commit():
        approve(change, carol, clock=clock)
    change.refresh_from_db()
    assert change.state == RequestState.EXECUTED
    policy = Policy.objects.get(name="standard").current
    assert (policy.number, policy.quorum["generate"]["approvals"], policy.request_id) == (2, 1, change.pk)

    after = open_generation(alice, "after")
    assert after.required_approvals == 1
    assert after.policy_ref.startswith("standard v2")
    # Requests opened before keep their quorum: one approval does not execute them.
    with on_commit():
        approve(before, dave, clock=clock)
        approve(during, dave, clock=clock)
    before.refresh_from_db()
    during.refresh_from_db()
    assert (before.state, during.state) == (RequestState.PENDING, RequestState.PENDING)
    assert before.policy_ref.startswith("standard v1")
    with on_commit():
        approve(after, dave, clock=clock)
    after.refresh_from_db()
    assert after.state == RequestState.EXECUTED


def test_only_a_security_officer_can_propose_a_policy_change_and_never_below_one_approval(
    alice: Any, bob: Any, olivia: Any, clock: Any
) -> None:
    for who in (alice, bob):
        with pytest.raises(Forbidden):
            lower_generate_quorum(who)
    with pytest.raises(ApplicationError, match="policy_change always needs at least one approval"):
        open_request(
            operation="policy_change",
            requester=olivia,
            justification="no more dual control",
            parameters={"name": "standard", "quorum": {"policy_change": {"approvals": 0}}},
        )


def test_a_second_change_of_the_same_policy_waits_until_the_first_is_decided(
    olivia: Any, bob: Any, carol: Any, clock: Any
) -> None:
    first = lower_generate_quorum(olivia)
    with pytest.raises(Conflict) as excinfo:
        open_request(
            operation="policy_change",
            requester=olivia,
            justification="longer waiting period",
            parameters={"name": "standard", "destruction_wait_days": 60},
        )
    assert excinfo.value.code == "request_pending"
    with on_commit():
        approve(first, bob, carol, clock=clock)
    second = open_request(
        operation="policy_change",
        requester=olivia,
        justification="longer waiting period",
        parameters={"name": "standard", "destruction_wait_days": 60},
    )
    assert second.parameters["base_version"] == 2
    assert second.parameters["settings"]["quorum"]["generate"]["approvals"] == 1  # builds on the change
