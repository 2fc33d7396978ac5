"""Signing in: password then TOTP code, lockout, enrolment, the custodian acknowledgement, idle timeout, sign-out."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import Acknowledgement
from audit.models import AuditEvent
from tests.conftest import PASSWORD, fresh_otp, make_user, otp_code, web_client

pytestmark = pytest.mark.django_db


def events(action: str, **filters: Any) -> int:
    return AuditEvent.objects.filter(action=action, **filters).count()


def password_step(client: Client, username: str, password: str = PASSWORD, next_url: str = "/") -> Any:
    return client.post("/accounts/login/", {"username": username, "password": password, "next": next_url})


def test_a_custodian_signs_in_with_password_then_code_and_lands_where_they_wanted(bob: Any, clock: Any) -> None:
    client = Client()
    first = client.get("/keys/")
    assert first.status_code == 302
    assert first["Location"] == "/accounts/login/?next=/keys/"
    response = password_step(client, "bob", next_url="/keys/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/otp/?next=%2Fkeys%2F"
    # Half signed in: every console page sends them back to the code step.
    assert client.get("/keys/")["Location"].startswith("/accounts/otp/")
    assert events("auth.login") == 0
    response = client.post("/accounts/otp/?next=/keys/", {"code": otp_code(bob), "next": "/keys/"})
    assert response.status_code == 302
    assert response["Location"] == "/keys/"
    assert client.get("/keys/").status_code == 200
    assert events("auth.login", actor="bob") == 1


def test_a_wrong_password_is_refused_with_a_sentence_and_audited(bob: Any, clock: Any) -> None:
    client = Client()
    response = password_step(client, "bob", password="not the password")
    assert response.status_code == 200
    assert b"The username or password is not correct." in response.content
    assert client.get("/").status_code == 302
    event = AuditEvent.objects.get(action="auth.login_failed")
    assert event.details["username"] == "bob"
    assert PASSWORD not in str(event.details) and "not the password" not in str(event.details)


def test_empty_fields_are_named_next_to_the_field(kms: Any) -> None:
    response = Client().post("/accounts/login/", {"username": "", "password": ""})
    assert response.status_code == 200
    assert b'data-field="username">Enter your username.' in response.content
    assert b'data-field="password">Enter your password.' in response.content


def test_repeated_failures_lock_the_account_even_for_the_right_password_until_the_lock_ends(
    bob: Any, clock: Any
) -> None:
    client = Client()
    for _ in range(settings.KMS_LOGIN_MAX_FAILURES - 1):
        assert b"not correct" in password_step(client, "bob", password="guess").content
    response = password_step(client, "bob", password="guess")
    assert b"this account is locked until" in response.content
    assert events("auth.account_locked") == 1
    response = password_step(client, "bob")
    assert response.status_code == 200
    assert b"this account is locked until" in response.content
    assert client.get("/").status_code == 302
    clock.advance(seconds=settings.KMS_LOGIN_LOCKOUT_SECONDS + 1)
    response = password_step(client, "bob")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/otp/")


def test_a_wrong_code_is_refused_next_to_the_field_and_a_later_right_one_works(bob: Any, clock: Any) -> None:
    client = Client()
    password_step(client, "bob")
    right = otp_code(bob)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    response = client.post("/accounts/otp/", {"code": wrong})
    assert response.status_code == 200
    assert b'data-field="code">That code was not accepted' in response.content
    # The code typed is not echoed back into the field.
    assert f'value="{wrong}"'.encode() not in response.content
    assert events("otp.failed", actor="bob") == 1
    assert events("auth.login_failed") == 1
    assert client.get("/").status_code == 302
    clock.advance(seconds=31)  # past django-otp's back-off, into the next time step
    response = client.post("/accounts/otp/", {"code": otp_code(bob)})
    assert response.status_code == 302
    assert client.get("/").status_code == 200


def test_a_malformed_code_is_explained_without_touching_the_device(bob: Any, clock: Any) -> None:
    client = Client()
    password_step(client, "bob")
    response = client.post("/accounts/otp/", {"code": "12ab"})
    assert b"The code has exactly 6 digits" in response.content
    assert events("otp.failed") == 0


def test_wrong_codes_count_as_failed_sign_ins_and_lock_the_account(bob: Any, clock: Any) -> None:
    client = Client()
    password_step(client, "bob")
    for _ in range(settings.KMS_LOGIN_MAX_FAILURES):
        response = client.post("/accounts/otp/", {"code": "000000"})
        clock.advance(seconds=5)
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/"
    page = client.get("/accounts/login/")
    assert b"this account is locked until" in page.content
    assert events("auth.account_locked") == 1


def test_a_privileged_user_without_a_device_enrols_from_the_qr_page(kms: Any, clock: Any) -> None:
    make_user("nina", {"key_admin"}, totp=False)
    client = Client()
    response = password_step(client, "nina")
    assert response["Location"] == "/accounts/enrol/?next=%2F"
    assert client.get("/keys/")["Location"].startswith("/accounts/enrol/")
    page = client.get("/accounts/enrol/").content.decode()
    assert 'src="data:image/svg+xml;base64,' in page
    secret = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page).group(1).replace(" ", "")
    # A reload shows the same secret (the pending device is kept in the session).
    assert secret in client.get("/accounts/enrol/").content.decode().replace(" ", "")
    key = base64.b32decode(secret)
    right = f"{totp(key, 30, 0, 6, 0):06d}"
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    response = client.post("/accounts/enrol/", {"code": wrong})
    assert b"That code is not valid for the new device" in response.content
    assert not TOTPDevice.objects.filter(user__username="nina", confirmed=True).exists()
    clock.advance(seconds=31)
    response = client.post("/accounts/enrol/", {"code": f"{totp(key, 30, 0, 6, 0):06d}"})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert TOTPDevice.objects.filter(user__username="nina", confirmed=True).count() == 1
    assert client.get("/").status_code == 200
    assert events("otp.enrolled", actor="nina") == 1
    assert events("auth.login", actor="nina") == 1


def test_each_sign_in_gets_its_own_enrolment_secret_and_is_told_an_earlier_one_is_void(kms: Any, clock: Any) -> None:
    make_user("nina", {"key_admin"}, totp=False)

    def enrolment_page() -> tuple[Client, str]:
        client = Client()
        password_step(client, "nina")
        return client, client.get("/accounts/enrol/").content.decode()

    def secret_of(page: str) -> str:
        return re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page).group(1).replace(" ", "")

    first_client, first = enrolment_page()
    assert 'id="earlier-secret-void"' not in first
    # Someone else with the password alone never sees the secret the first session shows.
    _, second = enrolment_page()
    assert secret_of(second) != secret_of(first)
    assert 'id="earlier-secret-void"' in second and "This is a new secret" in second
    assert TOTPDevice.objects.filter(user__username="nina").count() == 1
    # The first session's secret is void: a code from it does not enrol.
    key = base64.b32decode(secret_of(first))
    response = first_client.post("/accounts/enrol/", {"code": f"{totp(key, 30, 0, 6, 0):06d}"})
    assert response.status_code == 200
    assert not TOTPDevice.objects.filter(user__username="nina", confirmed=True).exists()
    assert AuditEvent.objects.filter(action="otp.enrolment_started", details__replaced=True).count() >= 1


def test_a_password_alone_cannot_replace_an_enrolled_device(bob: Any, clock: Any) -> None:
    client = Client()
    password_step(client, "bob")
    response = client.get("/accounts/enrol/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/otp/")
    assert TOTPDevice.objects.filter(user=bob).count() == 1


def test_a_custodian_without_a_current_acknowledgement_must_accept_the_text_first(kms: Any, clock: Any) -> None:
    cathy = make_user("cathy", {"custodian"}, acknowledged=False)
    client = web_client(cathy)
    response = client.get("/keys/")
    assert response["Location"] == "/accounts/acknowledge/?next=%2Fkeys%2F"
    page = client.get("/accounts/acknowledge/?next=/keys/")
    assert b"I never approve a request I made myself" in page.content
    response = client.post("/accounts/acknowledge/", {"next": "/keys/"})
    assert b"Tick the box to confirm that you accept these responsibilities." in response.content
    assert not Acknowledgement.objects.filter(user=cathy).exists()
    response = client.post("/accounts/acknowledge/", {"accept": "on", "next": "/keys/"})
    assert response["Location"] == "/keys/"
    assert Acknowledgement.objects.filter(user=cathy).count() == 1
    assert events("custodian.acknowledged", actor="cathy") == 1
    assert client.get("/keys/").status_code == 200


def test_the_acknowledgement_page_needs_the_second_factor_first(kms: Any, clock: Any) -> None:
    make_user("cathy", {"custodian"}, acknowledged=False)
    client = Client()
    password_step(client, "cathy")
    response = client.post("/accounts/acknowledge/", {"accept": "on"})
    assert response["Location"].startswith("/accounts/otp/")
    assert not Acknowledgement.objects.exists()


def test_an_idle_privileged_session_ends_after_fifteen_minutes_and_polls_do_not_keep_it_alive(
    bob: Any, clock: Any
) -> None:
    client = web_client(bob)
    assert client.get("/").status_code == 200
    clock.advance(seconds=10 * 60)
    assert client.get("/jobs/status/", HTTP_X_KMS_POLL="1").status_code == 200
    clock.advance(seconds=6 * 60)
    response = client.get("/keys/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=%2Fkeys%2F"
    assert b"signed out after 15 minutes without activity" in client.get(response["Location"]).content
    assert events("auth.session_expired", actor="bob") == 1
    assert DEVICE_ID_SESSION_KEY not in client.session


def test_activity_keeps_a_session_alive(bob: Any, clock: Any) -> None:
    client = web_client(bob)
    for _ in range(4):
        assert client.get("/").status_code == 200
        clock.advance(seconds=10 * 60)
    assert client.get("/").status_code == 200


def test_signing_out_is_recorded_and_ends_the_session(bob: Any, clock: Any) -> None:
    client = web_client(bob)
    response = client.post("/accounts/logout/")
    assert response["Location"] == "/accounts/login/"
    assert b"You are signed out." in client.get("/accounts/login/").content
    assert events("auth.logout", actor="bob") == 1
    assert client.get("/").status_code == 302


def test_the_way_back_never_leaves_the_site(bob: Any, clock: Any) -> None:
    client = Client()
    response = password_step(client, "bob", next_url="https://evil.example/")
    assert "evil" not in response["Location"]
    response = client.post("/accounts/otp/", {"code": fresh_otp(bob, clock), "next": "https://evil.example/"})
    assert response["Location"] == "/"


def test_a_signed_in_user_visiting_the_sign_in_page_carries_on(bob: Any, clock: Any) -> None:
    response = web_client(bob).get("/accounts/login/?next=/keys/")
    assert response.status_code == 302
    assert response["Location"] == "/keys/"


def test_an_auditor_without_a_device_signs_in_with_the_password_alone(kms: Any, clock: Any) -> None:
    make_user("ada", {"auditor"}, totp=False)
    client = Client()
    response = password_step(client, "ada")
    assert response["Location"] == "/"
    assert client.get("/audit/").status_code == 200
    assert events("auth.login", actor="ada") == 1
