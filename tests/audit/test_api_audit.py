"""The audit API: GET audit/events/, audit/events/{seq}/, audit/checkpoints/ and audit/verify/.

Auditors and security officers read; everybody else is refused (and that is recorded); every read
is recorded as an `audit.read` event; bad input is a 400 in the API's error shape, never a 5xx.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from rest_framework.test import APIClient

from audit import services
from audit.models import AuditEvent
from tests.api.conftest import API, assert_error
from tests.audit.helpers import add_events, change_details, delete_events
from tests.audit.tampering import Trail, build_trail
from tests.conftest import api_client, make_user, web_client

pytestmark = pytest.mark.django_db

EVENTS = f"{API}/audit/events/"
VERIFY = f"{API}/audit/verify/"
CHECKPOINTS = f"{API}/audit/checkpoints/"


@pytest.fixture
def trail(kms: Any, clock: Any) -> Trail:
    return build_trail()


def last_event() -> AuditEvent:
    return AuditEvent.objects.order_by("-seq").first()


# --- Reading events -------------------------------------------------------------------------------


def test_an_auditor_reads_the_trail_newest_first(trail: Trail, erin: Any) -> None:
    response = api_client(erin, scopes=["read"]).get(EVENTS)
    assert response.status_code == 200
    body = response.json()
    # The token's creation is the newest event before this read.
    assert body["count"] == trail.head + 1
    seqs = [row["seq"] for row in body["results"]]
    assert seqs == sorted(seqs, reverse=True)[:50]
    row = next(r for r in body["results"] if r["seq"] == trail.c2)
    stored = AuditEvent.objects.get(seq=trail.c2)
    assert row == {
        "seq": stored.seq,
        "at": stored.at.isoformat().replace("+00:00", "Z"),
        "actor": "system",
        "via": "system",
        "source": "",
        "action": "audit.checkpoint_signed",
        "target_type": "audit",
        "target_id": str(trail.c2),
        "details": stored.details,
        "prev_hash": stored.prev_hash,
        "hash": stored.hash,
    }


def test_every_read_is_recorded(trail: Trail, erin: Any) -> None:
    client = api_client(erin, scopes=["read"])
    client.get(EVENTS, {"action": "test.event", "page_size": 3, "ordering": "seq"})
    read = last_event()
    assert (read.action, read.actor, read.via, read.target_type) == ("audit.read", "erin", "api", "audit")
    first_three = list(AuditEvent.objects.filter(action="test.event").order_by("seq").values_list("seq", flat=True))[:3]
    assert read.details == {
        "view": "events",
        "filters": {"action": "test.event", "ordering": "seq", "page_size": "3"},
        "count": 12,
        "returned": 3,
        "lowest_seq": first_three[0],
        "highest_seq": first_three[-1],
    }
    client.get(f"{EVENTS}{trail.c1}/")
    assert (last_event().action, last_event().details) == (
        "audit.read",
        {"view": "event", "filters": {}, "seq": trail.c1},
    )
    client.get(CHECKPOINTS)
    assert last_event().details["view"] == "checkpoints"


def test_a_security_officer_reads_the_trail_too(trail: Trail, olivia: Any) -> None:
    assert api_client(olivia, scopes=["read"]).get(EVENTS).status_code == 200


def test_a_console_session_with_its_second_factor_reads_the_trail(trail: Trail, erin: Any) -> None:
    response = web_client(erin).get(EVENTS)
    assert response.status_code == 200
    assert last_event().via == "api"


@pytest.mark.parametrize("name", ["alice", "bob", "svc", "mallory"])
def test_other_roles_are_refused_and_the_refusal_is_recorded(trail: Trail, name: str) -> None:
    user = make_user(name)
    for path in (EVENTS, f"{EVENTS}{trail.c1}/", CHECKPOINTS, VERIFY):
        before = AuditEvent.objects.count()
        assert_error(api_client(user, scopes=["read"]).get(path), 403, "role_required")
        # Only the token's creation and the refusal itself were recorded; nothing was read.
        refusal = last_event()
        assert (refusal.action, refusal.actor) == ("audit.read_denied", name)
        assert AuditEvent.objects.count() == before + 2


def test_a_token_without_the_read_scope_is_refused(trail: Trail, erin: Any) -> None:
    assert_error(api_client(erin, scopes=["request"]).get(EVENTS), 403, "scope_required")
    assert last_event().action == "audit.read_denied"


def test_anonymous_callers_and_bad_tokens_are_refused_without_a_trace(trail: Trail) -> None:
    before = AuditEvent.objects.count()
    assert_error(APIClient().get(EVENTS), 401)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token kms_not-a-real-token")
    assert_error(client.get(VERIFY), 401)
    assert AuditEvent.objects.count() == before


def test_a_session_without_its_second_factor_is_refused(trail: Trail, erin: Any) -> None:
    client = APIClient()
    client.force_login(erin)  # password only: the API wants an OTP-verified session
    assert_error(client.get(EVENTS), 401)


def test_the_trail_is_read_only(trail: Trail, erin: Any) -> None:
    client = api_client(erin)
    for method in ("post", "put", "patch", "delete"):
        assert_error(getattr(client, method)(f"{EVENTS}{trail.c1}/", {}, format="json"), 405)
    assert_error(client.post(EVENTS, {}, format="json"), 405)
    assert_error(client.post(VERIFY, {}, format="json"), 405)


# --- Filters and pages ----------------------------------------------------------------------------


def test_it_filters_by_action_actor_target_and_time(trail: Trail, erin: Any, clock: Any) -> None:
    bob = make_user("bob")
    client = api_client(erin, scopes=["read"])
    clock.advance(hours=1)
    marker = clock.now()
    services.record("key.created", actor=bob, target_type="key", target_id="k-7")
    services.record("key.state_changed", actor=bob, target_type="key", target_id="k-7")
    services.record("key.state_changed", target_type="key", target_id="k-8")

    def seqs(**params: Any) -> list[int]:
        response = client.get(EVENTS, params)
        assert response.status_code == 200, response.json()
        return [row["seq"] for row in response.json()["results"]]

    head = trail.head + 1  # after the token's creation
    assert seqs(action="key.created") == [head + 1]
    assert seqs(action="key.") == [head + 3, head + 2, head + 1]
    assert seqs(actor="bob") == [head + 2, head + 1]
    assert seqs(target_type="key", target_id="k-8") == [head + 3]
    assert seqs(since=marker.isoformat(), action="key.") == [head + 3, head + 2, head + 1]
    assert seqs(until=(marker - dt.timedelta(seconds=1)).isoformat(), action="key.") == []
    assert seqs(until=marker.isoformat(), action="key.") == [head + 3, head + 2, head + 1]
    assert seqs(after_seq=head + 1, ordering="seq", action="key.") == [head + 2, head + 3]
    assert seqs(action="no.such") == []


def test_it_pages_over_a_fixed_stretch_with_before_seq(trail: Trail, erin: Any) -> None:
    client = api_client(erin, scopes=["read"])
    first = client.get(EVENTS, {"page_size": 5}).json()
    top = first["results"][0]["seq"]
    # Reading records an event, which would push the newest-first pages on by one; pinning the
    # stretch read keeps the pages apart.
    second = client.get(EVENTS, {"page_size": 5, "page": 2, "before_seq": top + 1}).json()
    assert [row["seq"] for row in first["results"]] == list(range(top, top - 5, -1))
    assert [row["seq"] for row in second["results"]] == list(range(top - 5, top - 10, -1))
    assert first["next"] and second["previous"]
    # Oldest first, pages stay put as the trail grows.
    oldest = client.get(EVENTS, {"page_size": 5, "ordering": "seq", "page": 2}).json()
    assert [row["seq"] for row in oldest["results"]] == [6, 7, 8, 9, 10]
    assert_error(client.get(EVENTS, {"page": 999}), 404)


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday"},
        {"until": "2026-13-40T00:00:00Z"},
        {"since": "9999-12-31T23:59:59-14:00"},
        {"until": "0001-01-01T00:00:00+14:00"},
        {"action": "\x00"},
        {"after_seq": "abc"},
        {"after_seq": "-1"},
        {"after_seq": "1.5"},
        {"after_seq": str(2**64)},
        {"before_seq": "x"},
        {"ordering": "actor"},
        {"action": "x" * 65},
        {"target_id": "y" * 65},
    ],
)
def test_bad_filters_are_a_400_in_the_error_shape(trail: Trail, erin: Any, params: dict[str, str]) -> None:
    error = assert_error(api_client(erin, scopes=["read"]).get(EVENTS, params), 400, "invalid")
    assert set(error["details"]) == set(params)


@pytest.mark.parametrize("seq", ["0", "999999", str(2**63), "99999999999999999999999"])
def test_an_unknown_sequence_number_is_a_404(trail: Trail, erin: Any, seq: str) -> None:
    assert_error(api_client(erin, scopes=["read"]).get(f"{EVENTS}{seq}/"), 404, "not_found")


def test_a_non_number_in_the_path_is_a_404(trail: Trail, erin: Any) -> None:
    assert_error(api_client(erin, scopes=["read"]).get(f"{EVENTS}abc/"), 404)


def test_the_list_takes_a_fixed_number_of_queries(trail: Trail, erin: Any, django_assert_num_queries: Any) -> None:
    client = api_client(erin, scopes=["read"])
    client.get(EVENTS)  # the token's last-used time is written once a minute; not in the count below

    # token + user, roles, count, page; then the read's own record in a savepoint (the test runs
    # in a transaction): savepoint, lock head, insert, move head, release.
    with django_assert_num_queries(9):
        small = client.get(EVENTS, {"page_size": 2})
    add_events(40)
    with django_assert_num_queries(9):
        large = client.get(EVENTS, {"page_size": 40})
    assert (len(small.json()["results"]), len(large.json()["results"])) == (2, 40)


def test_checkpoints_are_listed_newest_first(trail: Trail, erin: Any) -> None:
    body = api_client(erin, scopes=["read"]).get(CHECKPOINTS).json()
    assert [row["seq"] for row in body["results"]] == [trail.c2, trail.c1]
    assert set(body["results"][0]) == {"seq", "head_hash", "signed_at", "algorithm", "key_id", "signature"}


# --- Verify ---------------------------------------------------------------------------------------


def test_verify_reports_an_intact_trail(trail: Trail, erin: Any) -> None:
    response = api_client(erin, scopes=["read"]).get(VERIFY)
    assert response.status_code == 200
    body = response.json()
    head = trail.head + 1  # the token's creation
    assert body["ok"] is True
    assert (body["checked"], body["head_seq"]) == (head, head)
    assert body["head"] == AuditEvent.objects.get(seq=head).hash
    assert "first_bad_seq" not in body
    assert (body["checkpoints_checked"], body["last_checkpoint_seq"]) == (2, trail.c2)
    assert body["unsigned_events"] == head - trail.c2
    assert body["summary"].startswith(f"OK: {head} events verified")
    recorded = last_event()
    assert (recorded.action, recorded.actor, recorded.details["ok"]) == ("audit.verified", "erin", True)


def test_verify_names_the_first_broken_sequence_number(trail: Trail, olivia: Any) -> None:
    change_details(trail.middle, {"n": "edited"})
    body = api_client(olivia, scopes=["read"]).get(VERIFY).json()
    assert body["ok"] is False
    assert body["first_bad_seq"] == trail.middle
    assert "edited" in body["reason"]
    assert body["checked"] == trail.middle - 1
    assert last_event().details["first_bad_seq"] == trail.middle


def test_verify_names_a_cut_tail(trail: Trail, erin: Any) -> None:
    delete_events(seq_from=trail.c2 + 1)
    body = api_client(erin, scopes=["read"]).get(VERIFY).json()
    assert (body["ok"], body["first_bad_seq"]) == (False, trail.c2 + 1)
