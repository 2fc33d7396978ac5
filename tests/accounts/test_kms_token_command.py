"""`manage.py kms_token create|revoke|list` (SPEC §10): a token printed once; only its hash stored."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from accounts.authentication import ApiTokenAuthentication, token_scopes
from accounts.models import ApiToken
from accounts.services import authenticate_token
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def kms_token(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("kms_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def authenticate(raw: str) -> Any:
    request = Request(APIRequestFactory().get("/api/v1/keys/", HTTP_AUTHORIZATION=f"Token {raw}"))
    return ApiTokenAuthentication().authenticate(request)


def every_stored_text() -> str:
    """Everything the accounts and audit tables hold, as one string."""
    with connection.cursor() as cursor:
        rows = []
        for table in ("accounts_apitoken", "audit_auditevent"):
            cursor.execute(f"SELECT * FROM {table}")
            rows.extend(cursor.fetchall())
    return json.dumps(rows, default=str)


def test_create_prints_a_token_that_authenticates_and_stores_only_its_hash(svc: Any, clock: Any) -> None:
    out, err = kms_token("create", "--user", "svc", "--scope", "use", "--scope", "read", "--expires-in", "30")
    raw = out.strip()
    assert len(out.splitlines()) == 1
    assert raw.startswith("kms_") and len(raw) > 40
    assert err == "Scopes: read, use; expires: 2027-01-03.\n"  # what it may do, never the token

    token = ApiToken.objects.get(user=svc)
    assert token.digest == hashlib.sha256(raw.encode()).hexdigest()
    assert raw.startswith(token.prefix) and len(token.prefix) < len(raw)
    assert sorted(token.scopes) == ["read", "use"]
    assert token.expires_at == clock.now() + dt.timedelta(days=30)
    assert raw not in every_stored_text()

    user, auth = authenticate(raw)
    assert (user, auth) == (svc, token)
    request = Request(APIRequestFactory().get("/"))
    request.auth = auth
    assert token_scopes(request) == {"read", "use"}
    event = AuditEvent.objects.get(action="token.created")
    assert (event.via, event.details["user"], event.details["prefix"]) == ("cli", "svc", token.prefix)


def test_a_token_stops_authenticating_when_revoked_or_expired(svc: Any, clock: Any) -> None:
    revoked_raw = kms_token("create", "--user", "svc")[0].strip()
    expiring_raw = kms_token("create", "--user", "svc", "--expires-in", "1")[0].strip()
    revoked = ApiToken.objects.get(digest=hashlib.sha256(revoked_raw.encode()).hexdigest())

    _, err = kms_token("revoke", revoked.prefix)
    assert f"Revoked {revoked.prefix}" in err
    with pytest.raises(AuthenticationFailed):
        authenticate(revoked_raw)
    assert authenticate(expiring_raw) is not None
    clock.advance(days=1)
    assert authenticate_token(expiring_raw) is None
    with pytest.raises(AuthenticationFailed):
        authenticate(expiring_raw)
    assert authenticate_token(revoked_raw[:-1] + ("A" if revoked_raw[-1] != "A" else "B")) is None


def test_list_shows_prefixes_and_never_the_tokens(svc: Any, alice: Any) -> None:
    raw = kms_token("create", "--user", "svc", "--scope", "read")[0].strip()
    kms_token("create", "--user", "alice")
    out, _ = kms_token("list", "--user", "svc")
    assert raw not in out
    assert len(out.splitlines()) == 1
    assert out.startswith(raw[:12])
    assert "svc" in out and "read" in out and "live" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "--user", "nobody"], "no user named 'nobody'"),
        (["create", "--user", "svc", "--scope", "admin"], "invalid choice"),
        (["create", "--user", "svc", "--expires-in", "0"], "between 1 and 3650 days"),
        (["revoke", "kms_"], "give a longer prefix"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(svc: Any, args: list[str], message: str) -> None:
    kms_token("create", "--user", "svc")
    kms_token("create", "--user", "svc")
    before = ApiToken.objects.filter(revoked_at__isnull=True).count()
    with pytest.raises(CommandError, match=message):
        kms_token(*args)
    assert ApiToken.objects.filter(revoked_at__isnull=True).count() == before


@pytest.mark.parametrize(
    ("who", "scopes"),
    [
        ("svc", ["read", "use"]),
        ("alice", ["read", "request", "use"]),
        ("bob", ["approve", "read", "request"]),
        ("erin", ["read"]),
    ],
)
def test_without_scopes_a_token_gets_what_the_users_roles_can_use(
    svc: Any, alice: Any, bob: Any, erin: Any, who: str, scopes: list[str]
) -> None:
    out, err = kms_token("create", "--user", who)
    assert sorted(ApiToken.objects.get(user__username=who).scopes) == scopes
    assert len(out.split()) == 1  # stdout holds the token alone
    assert f"Scopes: {', '.join(scopes)}; expires: never." in err


@pytest.mark.parametrize("who", ["erin", "svc", "alice"])
def test_a_token_of_someone_who_never_approves_cannot_approve(svc: Any, alice: Any, erin: Any, who: str) -> None:
    with pytest.raises(CommandError, match="never approves"):
        kms_token("create", "--user", who, "--scope", "approve")
    assert not ApiToken.objects.filter(user__username=who).exists()
