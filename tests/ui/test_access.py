"""Who may open which console page: every page with each role, anonymous visitors, bad ids, wrong methods."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.test import Client

from accounts.services import roles_of
from tests.conftest import web_client
from tests.ui.helpers import make_estate, page_matrix

pytestmark = pytest.mark.django_db

CAST = ["alice", "bob", "olivia", "erin", "mallory", "svc"]


@pytest.fixture
def estate(alice: Any, bob: Any, carol: Any, clock: Any) -> Any:
    return make_estate(alice, bob, carol, clock)


@pytest.mark.parametrize("name", CAST)
def test_each_page_opens_for_the_roles_it_serves_and_is_forbidden_to_the_others(
    name: str, estate: Any, request: pytest.FixtureRequest, olivia: Any, erin: Any, mallory: Any, svc: Any
) -> None:
    user = request.getfixturevalue(name)
    client = web_client(user)
    held = roles_of(user)
    for path, roles in page_matrix(estate).items():
        response = client.get(path)
        expected = 200 if held & roles else 403
        assert response.status_code == expected, f"{name} GET {path}: {response.status_code}, expected {expected}"
        if expected == 403:
            assert b"You cannot open this page" in response.content


def test_anonymous_visitors_are_sent_to_the_sign_in_page_with_the_way_back(estate: Any) -> None:
    client = Client()
    for path in page_matrix(estate):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/accounts/login/?next="), path


def test_a_user_without_a_role_sees_no_navigation_and_is_told_why(mallory: Any) -> None:
    response = web_client(mallory).get("/")
    assert response.status_code == 403
    assert b'aria-label="Main"' not in response.content
    assert b"holds no role in this console yet" in response.content


def test_the_audit_link_shows_only_for_those_who_read_the_trail(estate: Any, alice: Any, erin: Any) -> None:
    assert b'href="/audit/"' not in web_client(alice).get("/").content
    assert b'href="/audit/"' in web_client(erin).get("/").content


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("erin", "decide"),
        ("mallory", "decide"),
        ("svc", "decide"),
        ("bob", "generate"),
        ("erin", "generate"),
        ("alice", "policy"),
        ("bob", "hsm_retire"),
        ("alice", "audit_verify"),
        ("mallory", "cancel"),
    ],
)
def test_posts_are_refused_to_roles_that_may_not_make_them(
    name: str, path: str, estate: Any, request: pytest.FixtureRequest
) -> None:
    user = request.getfixturevalue(name)
    urls = {
        "decide": f"/requests/{estate.rotation.pk}/decide/",
        "generate": "/keys/new/",
        "policy": "/policies/standard/propose/",
        "hsm_retire": "/hsms/default/retire/",
        "audit_verify": "/audit/verify/",
        "cancel": f"/requests/{estate.rotation.pk}/cancel/",
    }
    response = web_client(user).post(urls[path], {"justification": "x", "otp": "123456", "decision": "approve"})
    assert response.status_code == 403


def test_posts_from_anonymous_visitors_go_to_the_sign_in_page(estate: Any) -> None:
    response = Client().post(f"/requests/{estate.rotation.pk}/decide/", {"otp": "123456", "decision": "approve"})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_unknown_and_malformed_ids_answer_404(estate: Any, alice: Any, olivia: Any) -> None:
    missing = uuid.uuid4()
    cases = {
        alice: [
            f"/keys/{missing}/",
            "/keys/not-a-uuid/",
            f"/keys/{missing}/request/rotate/",
            f"/keys/{estate.key.pk}/request/no_such_operation/",
            f"/requests/{missing}/",
            "/requests/12345/",
            f"/jobs/{missing}/",
        ],
        olivia: [
            "/policies/no-such-policy/",
            "/policies/no-such-policy/propose/",
            "/custodians/nobody/roles/",
            "/hsms/no-such-hsm/retire/",
        ],
    }
    for user, paths in cases.items():
        client = web_client(user)
        for path in paths:
            method = client.post if path.endswith("/retire/") else client.get
            assert method(path).status_code == 404, path
    response = web_client(alice).get(f"/keys/{missing}/")
    assert b"Nothing here" in response.content


def test_wrong_methods_answer_405(estate: Any, bob: Any, olivia: Any) -> None:
    assert web_client(bob).get(f"/requests/{estate.rotation.pk}/decide/").status_code == 405
    assert web_client(bob).get(f"/requests/{estate.rotation.pk}/cancel/").status_code == 405
    assert web_client(olivia).get("/audit/verify/").status_code == 405
    assert web_client(olivia).get("/hsms/default/retire/").status_code == 405
    assert web_client(bob).post("/keys/").status_code == 405
    assert Client().get("/accounts/logout/").status_code == 405


def test_every_page_carries_the_security_headers(estate: Any, olivia: Any) -> None:
    response = web_client(olivia).get(f"/keys/{estate.key.pk}/")
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Cache-Control"] == "no-store"
    assert response["Referrer-Policy"] == "same-origin"
    # No inline script or style anywhere: the CSP would block them.
    assert b"<script>" not in response.content
    assert b" style=" not in response.content
    assert b" onclick=" not in response.content
