"""`lifecycle.selectors.key_timeline`: the chain of transitions, requests and approvers behind a key."""

from __future__ import annotations

from typing import Any

import pytest

from lifecycle.models import KeyTransition
from lifecycle.selectors import DecisionEntry, TimelineEntry, key_timeline
from lifecycle.states import KeyState
from tests.lifecycle.helpers import generate_key, run_operation

pytestmark = pytest.mark.django_db


def test_the_timeline_lists_every_transition_of_the_key_and_its_versions_in_order(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="orders")
    entries = key_timeline(key)

    assert all(isinstance(entry, TimelineEntry) for entry in entries)
    assert [(e.version, e.from_state, e.to_state, e.nist_transition) for e in entries] == [
        (None, None, KeyState.PRE_ACTIVATION, 1),
        (1, None, KeyState.PRE_ACTIVATION, 1),
        (None, KeyState.PRE_ACTIVATION, KeyState.ACTIVE, 4),
        (1, KeyState.PRE_ACTIVATION, KeyState.ACTIVE, 4),
    ]
    generation = entries[0]
    assert generation.actor == "system"  # the worker made it
    assert generation.reason == "a AES-256 key for the tests"
    assert generation.request is not None and generation.request.operation == "generate"
    assert generation.request.requester.get_username() == "alice"
    assert [(d.approver, d.decision) for d in generation.decisions] == [("bob", "approve"), ("carol", "approve")]
    assert all(isinstance(d, DecisionEntry) and d.decided_at for d in generation.decisions)
    assert generation.job is not None and generation.job.kind == "generate"


def test_the_timeline_names_the_request_and_approvers_behind_each_later_state(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="payroll")
    suspend = run_operation("suspend", key, cast.alice, cast.approvers, clock, justification="investigating a leak")
    resume = run_operation("resume", key, cast.alice, [cast.dave, cast.carol], clock, justification="all clear")

    entries = [e for e in key_timeline(key) if e.version is None][-2:]
    assert [(e.from_state, e.to_state, e.nist_transition) for e in entries] == [
        (KeyState.ACTIVE, KeyState.SUSPENDED, 7),
        (KeyState.SUSPENDED, KeyState.ACTIVE, 10),
    ]
    suspended, resumed = entries
    assert suspended.request.pk == suspend.pk
    assert suspended.decisions == ()  # suspend acts at once (quorum 0)
    assert suspended.actor == "alice"
    assert suspended.reason == "investigating a leak"
    assert resumed.request.pk == resume.pk
    assert [d.approver for d in resumed.decisions] == ["dave", "carol"]
    assert resumed.job is None


def test_the_timeline_of_a_rotated_key_shows_each_version(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="rotated")
    run_operation("rotate", key, cast.alice, cast.approvers, clock)

    by_version = [
        (e.version, e.to_state) for e in key_timeline(key) if e.kind == "transition" and e.version is not None
    ]
    assert by_version == [
        (1, KeyState.PRE_ACTIVATION),
        (1, KeyState.ACTIVE),
        (2, KeyState.PRE_ACTIVATION),
        (2, KeyState.ACTIVE),
        (1, KeyState.DEACTIVATED),
    ]


def test_the_timeline_takes_four_queries_however_long_the_history(
    cast: Any, clock: Any, django_assert_num_queries: Any
) -> None:
    short = generate_key(cast.alice, cast.approvers, clock, name="short")
    long = generate_key(cast.alice, cast.approvers, clock, name="long")
    for _ in range(3):
        run_operation("suspend", long, cast.alice, cast.approvers, clock)
        run_operation("resume", long, cast.alice, cast.approvers, clock)
    run_operation("rotate", long, cast.alice, cast.approvers, clock)
    assert KeyTransition.objects.filter(key=long).count() > 3 * KeyTransition.objects.filter(key=short).count()

    with django_assert_num_queries(4):
        short_entries = key_timeline(short)
    with django_assert_num_queries(4):
        long_entries = key_timeline(long)
        # Transitions, the key's step events, their requests (and reviews), the decisions. Reading
        # every field, the request's requester and the decisions needs no further query.
        for entry in long_entries:
            _ = (entry.request and entry.request.requester.get_username(), entry.decisions, entry.job)
    assert len(short_entries) == 4
    assert len(long_entries) > 12


def test_the_timeline_accepts_a_key_id_and_is_empty_for_an_unknown_key(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="by-id")
    assert [e.id for e in key_timeline(key.pk)] == [e.id for e in key_timeline(key)]
    assert key_timeline("00000000-0000-0000-0000-000000000000") == []
