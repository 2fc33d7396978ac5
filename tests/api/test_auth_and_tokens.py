"""Authentication, the error shape of every kind of 4xx, rate limits, and the tokens API."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import ApiToken
from accounts.services import create_token, revoke_token
from accounts.throttling import TokenRateThrottle
from audit.models import AuditEvent
from tests.api.conftest import API, assert_error
from tests.conftest import api_client, web_client

pytestmark = pytest.mark.django_db


def token_client(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


# --- authentication -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    ["Token kms_not-a-real-token", "Token", "Token a b", "Token \u00e9t\u00e9", "Token " + "x" * 500, "Token kms_"],
)
def test_bad_credentials_are_a_401_in_the_error_shape(cast: SimpleNamespace, header: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header.encode("utf-8").decode("latin-1"))
    response = client.get(f"{API}/keys/")
    error = assert_error(response, 401, "authentication_failed")
    assert "kms_not-a-real-token" not in error["message"]


def test_a_revoked_or_expired_token_no_longer_authenticates(cast: SimpleNamespace, clock: Any) -> None:
    _, raw = create_token(user=cast.erin, scopes=["read"], expires_in_days=1)
    client = token_client(raw)
    assert client.get(f"{API}/keys/").status_code == 200
    clock.advance(days=1, seconds=1)
    assert_error(client.get(f"{API}/keys/"), 401, "authentication_failed")
    _, raw2 = create_token(user=cast.erin, scopes=["read"])
    revoke_token(token=ApiToken.objects.get(prefix=raw2[:12]), actor=cast.erin)
    assert_error(token_client(raw2).get(f"{API}/keys/"), 401, "authentication_failed")


def test_a_disabled_user_s_token_no_longer_authenticates(cast: SimpleNamespace) -> None:
    client = api_client(cast.erin)
    cast.erin.is_active = False
    cast.erin.save()
    assert_error(client.get(f"{API}/keys/"), 401, "authentication_failed")


def test_an_otp_verified_console_session_may_call_the_api(cast: SimpleNamespace, kms: Any) -> None:
    assert web_client(cast.erin).get(f"{API}/keys/").status_code == 200


def test_a_session_without_its_second_factor_may_not(cast: SimpleNamespace, kms: Any) -> None:
    client = Client()
    client.force_login(cast.alice)  # password only: the TOTP step was not done
    assert_error(client.get(f"{API}/keys/"), 401, "not_authenticated")


def test_a_session_post_needs_the_csrf_token(cast: SimpleNamespace, kms: Any) -> None:
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    client = Client(enforce_csrf_checks=True)
    client.force_login(cast.alice)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = TOTPDevice.objects.get(user=cast.alice).persistent_id
    session.save()
    response = client.post(f"{API}/keys/", {"name": "x"}, content_type="application/json")
    error = assert_error(response, 403, "permission_denied")
    assert "CSRF" in error["message"]


def test_the_audit_trail_records_api_calls_with_their_channel(cast: SimpleNamespace, clock: Any) -> None:
    api_client(cast.erin).post(
        f"{API}/keys/",
        {"name": "x", "algorithm": "AES-256", "usage": "encrypt_decrypt", "justification": "j"},
        format="json",
    )
    event = AuditEvent.objects.get(action="request.refused")
    assert (event.actor, event.via, event.source) == ("erin", "api", "127.0.0.1")


# --- error shape for what is not a view's doing ---------------------------------------------------


def test_unrouted_api_paths_answer_404_in_the_error_shape(cast: SimpleNamespace) -> None:
    client = api_client(cast.erin)
    assert_error(client.get(f"{API}/nothing-here/"), 404, "not_found")
    assert_error(client.post(f"{API}/keys/00000000-0000-4000-8000-000000000000/levitate/", {}, format="json"), 404)


def test_a_wrong_method_is_a_405(cast: SimpleNamespace) -> None:
    assert_error(api_client(cast.alice).delete(f"{API}/keys/"), 405, "method_not_allowed")
    assert_error(api_client(cast.alice).put(f"{API}/policies/standard/", {}, format="json"), 405)


def test_malformed_json_and_other_media_types(cast: SimpleNamespace) -> None:
    client = api_client(cast.alice)
    assert_error(client.post(f"{API}/keys/", "{not json", content_type="application/json"), 400, "parse_error")
    assert_error(
        client.post(f"{API}/keys/", "name=x", content_type="application/x-www-form-urlencoded"),
        415,
        "unsupported_media_type",
    )
    response = client.get(f"{API}/keys/", HTTP_ACCEPT="text/html")
    assert_error(response, 406, "not_acceptable")


def test_a_deeply_nested_or_oversized_body_is_a_4xx_not_a_500(cast: SimpleNamespace, settings: Any) -> None:
    client = api_client(cast.alice)
    assert_error(client.post(f"{API}/keys/", "[" * 100_000, content_type="application/json"), 400, "parse_error")
    assert_error(client.post(f"{API}/keys/", b"\xff\xfe{}", content_type="application/json"), 400, "parse_error")
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = '{"name": "' + "x" * 2000 + '"}'
    assert_error(client.post(f"{API}/keys/", body, content_type="application/json"), 413, "too_large")


@pytest.fixture
def tight_rate(monkeypatch: Any) -> Any:
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"token": "3/min"})
    cache.clear()
    yield
    cache.clear()


def test_the_rate_limit_is_per_token_and_answers_429_in_the_error_shape(
    cast: SimpleNamespace, tight_rate: Any, clock: Any
) -> None:
    first, second = api_client(cast.erin), api_client(cast.erin)
    for _ in range(3):
        assert first.get(f"{API}/keys/").status_code == 200
    response = first.get(f"{API}/keys/")
    error = assert_error(response, 429, "throttled")
    assert int(response["Retry-After"]) > 0
    assert "throttled" in error["message"].lower() or "available" in error["message"].lower()
    assert second.get(f"{API}/keys/").status_code == 200  # another token has its own budget
    clock.advance(seconds=61)
    assert first.get(f"{API}/keys/").status_code == 200


# --- tokens ---------------------------------------------------------------------------------------


def test_a_user_lists_only_their_own_tokens_and_never_the_token_itself(cast: SimpleNamespace) -> None:
    mine = api_client(cast.alice)
    create_token(user=cast.bob, name="bob's")
    response = mine.get(f"{API}/tokens/")
    assert response.status_code == 200
    [row] = response.json()["results"]
    assert set(row) == {"id", "name", "prefix", "scopes", "created_at", "expires_at", "last_used_at", "revoked_at"}
    assert mine.raw_token not in response.content.decode()
    assert row["prefix"] == mine.raw_token[:12]


def test_creating_a_token_shows_it_once_and_stores_only_its_hash(cast: SimpleNamespace, clock: Any) -> None:
    session = web_client(cast.alice)
    response = session.post(
        f"{API}/tokens/", {"name": "ci", "scopes": ["read"], "expires_in_days": 30}, content_type="application/json"
    )
    assert response.status_code == 201
    body = response.json()
    raw = body["token"]
    assert raw.startswith("kms_") and body["scopes"] == ["read"] and body["name"] == "ci"
    assert body["expires_at"] == "2027-01-03T09:00:00Z"
    token = ApiToken.objects.get(pk=body["id"])
    assert token.digest != raw and raw not in str(ApiToken.objects.values())
    assert token_client(raw).get(f"{API}/keys/").status_code == 200
    assert_error(token_client(raw).post(f"{API}/keys/", {}, format="json"), 403, "scope_required")
    assert "token" not in session.get(f"{API}/tokens/").json()["results"][0]
    assert raw not in str(AuditEvent.objects.filter(action="token.created").values("details"))


def test_a_token_cannot_mint_a_more_powerful_or_longer_lived_token(cast: SimpleNamespace, clock: Any) -> None:
    _, raw = create_token(user=cast.alice, scopes=["read", "request"], expires_in_days=10)
    client = token_client(raw)
    assert_error(client.post(f"{API}/tokens/", {"scopes": ["approve"]}, format="json"), 403, "scope_required")
    assert_error(client.post(f"{API}/tokens/", {"expires_in_days": 11}, format="json"), 400, "invalid_expiry")
    response = client.post(f"{API}/tokens/", {"name": "child"}, format="json")
    assert response.status_code == 201
    assert response.json()["scopes"] == ["read", "request"]
    assert response.json()["expires_at"] == "2026-12-14T09:00:00Z"


def test_revoking_a_token_revokes_every_token_it_minted(cast: SimpleNamespace, clock: Any) -> None:
    from accounts.services import revoke_token

    parent, raw = create_token(user=cast.alice, scopes=["read", "request"])
    child_raw = token_client(raw).post(f"{API}/tokens/", {"name": "child"}, format="json").json()["token"]
    grandchild_raw = (
        token_client(child_raw).post(f"{API}/tokens/", {"name": "grandchild"}, format="json").json()["token"]
    )
    _, sibling_raw = create_token(user=cast.alice, name="from the console")
    assert ApiToken.objects.get(name="grandchild").parent.name == "child"
    # The leaked token is revoked: what it minted goes with it; other tokens stay.
    revoke_token(token=parent, actor=cast.alice)
    for leaked in (raw, child_raw, grandchild_raw):
        assert_error(token_client(leaked).get(f"{API}/tokens/"), 401)
    assert token_client(sibling_raw).get(f"{API}/tokens/").status_code == 200
    revoked = AuditEvent.objects.filter(action="token.revoked").values_list("details__with_parent", flat=True)
    assert sorted(v or "" for v in revoked) == ["", parent.prefix, parent.prefix]


def test_an_outsider_manages_their_own_tokens_and_nothing_else(cast: SimpleNamespace) -> None:
    client = api_client(cast.mallory)
    created = client.post(f"{API}/tokens/", {"name": "mine"}, format="json")
    assert created.status_code == 201
    assert client.get(f"{API}/tokens/").json()["count"] == 2
    assert client.delete(f"{API}/tokens/{created.json()['id']}/").status_code == 204
    assert_error(client.get(f"{API}/keys/"), 403, "role_required")
    assert_error(client.get(f"{API}/policies/"), 403, "role_required")


def test_revoking_a_token(cast: SimpleNamespace) -> None:
    client = api_client(cast.alice)
    _, raw = create_token(user=cast.alice, name="old")
    old = ApiToken.objects.get(name="old")
    assert client.delete(f"{API}/tokens/{old.pk}/").status_code == 204
    old.refresh_from_db()
    assert old.revoked_at is not None
    assert_error(token_client(raw).get(f"{API}/tokens/"), 401)
    assert AuditEvent.objects.filter(action="token.revoked", target_id=str(old.pk)).exists()


@pytest.mark.parametrize("token_id", ["00000000-0000-4000-8000-000000000000", "nope"])
def test_revoking_an_unknown_token_is_a_404(cast: SimpleNamespace, token_id: str) -> None:
    assert_error(api_client(cast.alice).delete(f"{API}/tokens/{token_id}/"), 404, "not_found")


def test_nobody_revokes_someone_else_s_token(cast: SimpleNamespace) -> None:
    bobs, _ = create_token(user=cast.bob)
    assert_error(api_client(cast.alice).delete(f"{API}/tokens/{bobs.pk}/"), 404, "not_found")
    bobs.refresh_from_db()
    assert bobs.revoked_at is None


@pytest.mark.parametrize(
    "body",
    [
        {"scopes": ["root"]},
        {"scopes": []},
        {"scopes": "read"},
        {"expires_in_days": 0},
        {"expires_in_days": 4000},
        {"expires_in_days": "soon"},
        {"name": "x" * 101},
        ["read"],
    ],
)
def test_malformed_token_requests_are_400s(cast: SimpleNamespace, body: Any) -> None:
    assert_error(api_client(cast.alice).post(f"{API}/tokens/", body, format="json"), 400)


def test_tokens_need_credentials(client: Any) -> None:
    assert_error(client.get(f"{API}/tokens/"), 401)
    assert_error(client.post(f"{API}/tokens/", {}, content_type="application/json"), 401)


def test_the_token_list_runs_a_fixed_number_of_queries(cast: SimpleNamespace, django_assert_num_queries: Any) -> None:
    client = api_client(cast.alice)
    client.get(f"{API}/tokens/")
    for index in range(5):
        create_token(user=cast.alice, name=f"t{index}")
    # token, count, page
    with django_assert_num_queries(3):
        assert client.get(f"{API}/tokens/").json()["count"] == 6


def test_token_expiry_is_kept_in_utc(cast: SimpleNamespace, clock: Any) -> None:
    token, _ = create_token(user=cast.alice, expires_in_days=2)
    assert token.expires_at == clock.now() + dt.timedelta(days=2)


def test_an_unsupported_method_is_a_405_whatever_the_tokens_scopes(erin: Any) -> None:
    from tests.conftest import api_client

    response = api_client(erin).post("/api/v1/audit/verify/")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_options_is_a_405_on_every_api_route_for_everyone(cast: SimpleNamespace, mallory: Any, kms: Any) -> None:
    """No OPTIONS metadata (the schema describes the API): never a 5xx, never a view's details."""
    import re
    import uuid

    from django.urls import URLPattern, URLResolver, get_resolver

    from tests.conftest import api_client

    def walk(patterns: Any, prefix: str = "") -> Any:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                yield prefix + str(pattern.pattern)

    some_id = str(uuid.uuid4())
    paths = set()
    for raw in walk(get_resolver().url_patterns):
        if not raw.startswith("api/v1/"):
            continue
        path = "/" + re.sub(r"<[^>]+>", some_id, re.sub(r"\(\?P<[^>]+>[^)]*\)", some_id, raw)).strip("^$")
        path = path.replace("\\.", ".").replace("/?", "/")
        if "(" not in path and "[" not in path and "format" not in path:
            paths.add(path)
    assert len(paths) > 40
    for user in (cast.alice, cast.bob, cast.olivia, cast.erin, cast.svc, mallory):
        client = api_client(user)
        for path in sorted(paths):
            response = client.options(path)
            assert response.status_code in (403, 404, 405), (user.username, path, response.status_code)
            assert response.status_code != 405 or response.json()["error"]["code"] == "method_not_allowed"


def test_a_token_revoked_while_it_mints_gets_no_child(cast: SimpleNamespace) -> None:
    from accounts.services import revoke_token
    from kms_console.lib.errors import Forbidden

    parent, _ = create_token(user=cast.alice, scopes=["read"])
    stale = ApiToken.objects.get(pk=parent.pk)  # as authenticated before the revocation committed
    revoke_token(token=parent, actor=cast.alice)
    with pytest.raises(Forbidden):
        create_token(user=cast.alice, scopes=["read"], parent=stale)
    assert ApiToken.objects.filter(parent=parent).count() == 0
