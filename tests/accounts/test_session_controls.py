"""Idle timeout for every console session that can read or change sensitive things (pages and the
API's session authentication), and the second factor on the read-only admin."""

from __future__ import annotations

from typing import Any

from django.test import Client

from audit.models import AuditEvent
from tests.conftest import web_client


def test_an_idle_console_session_stops_working_on_the_api_too(alice: Any, clock: Any) -> None:
    client = web_client(alice)
    assert client.get("/").status_code == 200  # the console marks the session active
    assert client.get("/api/v1/keys/").status_code == 200
    clock.advance(minutes=16)
    response = client.get("/api/v1/keys/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "session_expired"
    assert AuditEvent.objects.filter(action="auth.session_expired", actor="alice").exists()
    assert client.get("/api/v1/keys/").status_code in (401, 403)  # signed out for good


def test_an_auditor_session_times_out_as_well(erin: Any, clock: Any) -> None:
    client = web_client(erin)
    assert client.get("/").status_code == 200
    clock.advance(minutes=16)
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_the_admin_wants_a_verified_second_factor(olivia: Any, mallory: Any) -> None:
    olivia.is_staff = olivia.is_superuser = True
    olivia.save()
    password_only = Client()
    password_only.force_login(olivia)  # no OTP device verified in this session
    response = password_only.get("/admin/lifecycle/key/")
    assert response.status_code == 302  # to the console's OTP step (or the admin's own login)
    assert response["Location"].startswith(("/accounts/otp/", "/admin/login/"))
    assert web_client(olivia).get("/admin/lifecycle/key/").status_code == 200


def test_a_staff_account_without_a_device_cannot_read_the_admin(kms: Any) -> None:
    from tests.conftest import make_user

    staff = make_user("staffer", set(), totp=False)
    staff.is_staff = staff.is_superuser = True
    staff.save()
    client = Client()
    client.force_login(staff)
    response = client.get("/admin/lifecycle/key/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]  # django-otp's admin login wants a device code
