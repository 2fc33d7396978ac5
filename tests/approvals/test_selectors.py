"""`approvals.selectors`: the approver's inbox and the requester's open requests."""

from __future__ import annotations

from typing import Any

import pytest

from approvals.models import RequestState
from approvals.selectors import open_requests_of, requests_waiting_for
from approvals.services import cancel, decide, expire_overdue, open_request
from tests.conftest import fresh_otp, make_user
from tests.lifecycle.helpers import generate_key

pytestmark = pytest.mark.django_db


def open_generation(requester: Any, name: str) -> Any:
    return open_request(
        operation="generate",
        requester=requester,
        justification="needed for the inbox tests",
        parameters={"name": name, "algorithm": "AES-256", "usage": "encrypt_decrypt"},
    )


def test_a_custodian_sees_pending_requests_they_have_not_decided(alice: Any, bob: Any, carol: Any, clock: Any) -> None:
    first = open_generation(alice, "first")
    second = open_generation(alice, "second")
    assert set(requests_waiting_for(bob)) == {first, second}

    decide(request_id=first.pk, approver=bob, decision="approve", otp=fresh_otp(bob, clock), digest=first.digest)
    assert list(requests_waiting_for(bob)) == [second]  # decided: no longer waiting for bob
    assert set(requests_waiting_for(carol)) == {first, second}  # still waiting for carol


def test_the_inbox_leaves_out_own_requests_other_roles_and_finished_requests(
    alice: Any, bob: Any, carol: Any, erin: Any, svc: Any, mallory: Any, olivia: Any, clock: Any
) -> None:
    both = make_user("frank", {"key_admin", "custodian"})
    own = open_generation(both, "own")
    other = open_generation(alice, "other")
    cancelled = open_generation(alice, "cancelled")
    cancel(request_id=cancelled.pk, actor=alice)

    assert list(requests_waiting_for(both)) == [other]  # never their own
    assert set(requests_waiting_for(bob)) == {own, other}
    for outsider in (alice, erin, svc, mallory, olivia):  # key_admin, auditor, api client, no role, officer
        assert list(requests_waiting_for(outsider)) == []

    clock.advance(hours=73)  # past approve_by, before the sweep expires them
    assert list(requests_waiting_for(bob)) == []
    expire_overdue()
    assert list(requests_waiting_for(bob)) == []


def test_the_inbox_follows_the_approver_roles_of_the_rule(olivia: Any, bob: Any, carol: Any, clock: Any) -> None:
    officer_approver = make_user("sam", {"security_officer"})
    request = open_request(
        operation="policy_change",
        requester=olivia,
        justification="officers approve this one",
        parameters={
            "name": "officers",
            "quorum": {"generate": {"approvals": 1, "approver_roles": ["security_officer"]}},
        },
    )
    assert request.approver_roles == ["custodian"]  # a new policy follows the standard rule
    assert list(requests_waiting_for(bob)) == [request]
    assert list(requests_waiting_for(officer_approver)) == []


def test_the_inbox_lists_the_soonest_deadline_first(alice: Any, bob: Any, clock: Any) -> None:
    early = open_generation(alice, "early")
    clock.advance(minutes=5)
    late = open_generation(alice, "late")
    assert list(requests_waiting_for(bob)) == [early, late]


def test_the_inbox_takes_a_fixed_number_of_queries(
    alice: Any, bob: Any, clock: Any, django_assert_num_queries: Any
) -> None:
    for n in range(5):
        open_generation(alice, f"k{n}")
    bob_with_roles = type(bob).objects.get(pk=bob.pk)
    with django_assert_num_queries(3):  # roles, candidates, the page
        rows = list(requests_waiting_for(bob_with_roles))
        names = [row.requester.get_username() for row in rows]
    assert names == ["alice"] * 5


def test_open_requests_of_lists_the_requesters_unfinished_requests(
    alice: Any, bob: Any, carol: Any, olivia: Any, clock: Any
) -> None:
    pending = open_generation(alice, "pending")
    cancelled = open_generation(alice, "cancelled")
    cancel(request_id=cancelled.pk, actor=alice)
    key = generate_key(alice, [bob, carol], clock, name="done")
    assert key.created_by_request.state == RequestState.EXECUTED

    assert list(open_requests_of(alice)) == [pending]
    assert list(open_requests_of(olivia)) == []
    assert list(open_requests_of(bob)) == []
