"""`manage.py kms_user create|acknowledge|show` (SPEC §10): the operator's bootstrap of console users."""

from __future__ import annotations

import base64
import io
import json
import sys
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import services
from accounts.models import Acknowledgement
from approvals.services import open_request
from audit.models import AuditEvent
from kms_console.lib.errors import Forbidden
from tests.conftest import fresh_otp

pytestmark = pytest.mark.django_db

PASSWORD = "a long and unusual passphrase 4711"


def kms_user(*args: str, stdin: str | None = None, monkeypatch: Any = None) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    call_command("kms_user", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def code_from_uri(uri: str) -> str:
    """The TOTP code an authenticator app that scanned `uri` shows now (RFC 6238, frozen clock)."""
    query = parse_qs(urlparse(uri).query)
    secret = query["secret"][0]
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    digits = int(query.get("digits", ["6"])[0])
    return f"{totp(key, step=int(query.get('period', ['30'])[0]), digits=digits):0{digits}d}"


def test_create_with_totp_prints_only_the_otpauth_uri_with_its_secret(kms: Any, clock: Any, monkeypatch: Any) -> None:
    out, err = kms_user(
        "create", "zoe", "--role", "custodian", "--email", "zoe@example.test", "--password-stdin", "--totp",
        stdin=PASSWORD + "\n",
        monkeypatch=monkeypatch,
    )  # fmt: skip

    lines = out.splitlines()
    assert len(lines) == 1
    uri = lines[0]
    assert uri.startswith("otpauth://totp/")
    assert "secret=" in uri
    assert PASSWORD not in out + err
    assert "Created zoe with roles custodian" in err

    user = get_user_model().objects.get(username="zoe")
    assert user.check_password(PASSWORD)
    assert user.email == "zoe@example.test"
    assert services.roles_of(user) == {"custodian"}
    device = TOTPDevice.objects.get(user=user)
    assert device.confirmed
    # The URI's secret is the device's: the code an app would show verifies.
    assert services.verify_device_code(device, code_from_uri(uri))
    event = AuditEvent.objects.get(action="user.provisioned")
    assert (event.via, event.details["created"], event.details["totp_enrolled"]) == ("cli", True, True)
    assert PASSWORD not in json.dumps(event.details)
    assert query_secret(uri) not in json.dumps(event.details)


def query_secret(uri: str) -> str:
    return parse_qs(urlparse(uri).query)["secret"][0]


def test_create_again_updates_the_same_user_idempotently(kms: Any, monkeypatch: Any) -> None:
    kms_user("create", "zoe", "--role", "key_admin", "--password-stdin", stdin=PASSWORD + "\n", monkeypatch=monkeypatch)
    first = get_user_model().objects.get(username="zoe")

    out, err = kms_user("create", "zoe", "--role", "key_admin", "--email", "z@example.test")
    assert out == ""  # no --totp: nothing on stdout
    assert "Updated zoe" in err
    user = get_user_model().objects.get(username="zoe")
    assert user.pk == first.pk
    assert get_user_model().objects.filter(username="zoe").count() == 1
    assert services.roles_of(user) == {"key_admin"}
    assert user.check_password(PASSWORD)  # no --password-stdin: the password stays
    assert user.email == "z@example.test"
    # The same call once more changes nothing and records that it changed nothing.
    kms_user("create", "zoe", "--role", "key_admin", "--email", "z@example.test")
    last = AuditEvent.objects.filter(action="user.provisioned").order_by("seq").last()
    assert last.details["roles_before"] == last.details["roles"] == ["key_admin"]


def test_the_command_never_changes_the_roles_of_a_user_who_has_some(kms: Any, monkeypatch: Any) -> None:
    kms_user("create", "zoe", "--role", "key_admin")
    with pytest.raises(CommandError, match="dual-controlled role change"):
        kms_user("create", "zoe", "--role", "key_admin", "--role", "custodian")
    assert services.roles_of(get_user_model().objects.get(username="zoe")) == {"key_admin"}
    # A user created without roles may be given their first ones (bootstrap).
    kms_user("create", "yan")
    kms_user("create", "yan", "--role", "auditor")
    assert services.roles_of(get_user_model().objects.get(username="yan")) == {"auditor"}


def test_totp_is_enrolled_once_and_a_lost_device_is_reset_first(kms: Any, monkeypatch: Any) -> None:
    first, _ = kms_user("create", "zoe", "--role", "custodian", "--totp")
    with pytest.raises(CommandError, match="already has a confirmed TOTP device"):
        kms_user("create", "zoe", "--role", "custodian", "--totp")
    user = get_user_model().objects.get(username="zoe")
    assert TOTPDevice.objects.filter(user=user).count() == 1
    kms_user("reset-totp", "zoe")
    assert not TOTPDevice.objects.filter(user=user).exists()
    assert AuditEvent.objects.filter(action="otp.reset", target_id=str(user.pk)).exists()
    second, _ = kms_user("create", "zoe", "--role", "custodian", "--totp")
    assert query_secret(first) != query_secret(second)
    assert not user.has_usable_password()  # created without --password-stdin


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--role", "custodian", "--password-stdin"], "\n", "standard input held no password"),
        (["--role", "custodian", "--password-stdin"], "zoe\n", "password"),  # too short / similar
        (["--role", "auditor", "--role", "custodian"], None, "auditor role cannot be combined"),
        (["--role", "api_client", "--role", "key_admin"], None, "service account"),
        (["--role", "superuser"], None, "invalid choice"),
    ],
)
def test_create_refuses_bad_input_with_a_clear_error_and_creates_nothing(
    kms: Any, monkeypatch: Any, args: list[str], stdin: str | None, message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        kms_user("create", "zoe", *args, stdin=stdin, monkeypatch=monkeypatch)
    assert not get_user_model().objects.filter(username="zoe").exists()


def test_a_custodian_created_by_the_command_approves_only_after_acknowledging(
    kms: Any, alice: Any, clock: Any, monkeypatch: Any
) -> None:
    kms_user("create", "zoe", "--role", "custodian", "--totp")
    zoe = get_user_model().objects.get(username="zoe")
    req = open_request(
        operation="generate",
        requester=alice,
        justification="a key",
        parameters={"name": "k", "algorithm": "AES-256", "usage": "encrypt_decrypt"},
    )
    from approvals.services import decide

    with pytest.raises(Forbidden, match="acknowledgement"):
        decide(request_id=req.pk, approver=zoe, decision="approve", otp=fresh_otp(zoe, clock), digest=req.digest)

    _, err = kms_user("acknowledge", "zoe")
    assert "Recorded the acknowledgement of zoe" in err
    assert Acknowledgement.objects.filter(user=zoe).count() == 1
    event = AuditEvent.objects.get(action="custodian.acknowledged")
    assert (event.via, event.details["username"]) == ("cli", "zoe")
    decide(request_id=req.pk, approver=zoe, decision="approve", otp=fresh_otp(zoe, clock), digest=req.digest)
    assert req.decisions.filter(approver=zoe).exists()


def test_acknowledge_refuses_unknown_users_and_non_custodians(kms: Any, alice: Any) -> None:
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        kms_user("acknowledge", "nobody")
    with pytest.raises(CommandError, match="alice is not a custodian"):
        kms_user("acknowledge", "alice")
    assert not Acknowledgement.objects.filter(user=alice).exists()


def test_show_reports_roles_second_factor_and_acknowledgement(kms: Any, bob: Any, alice: Any) -> None:
    out, _ = kms_user("show", "bob")
    assert out.strip() == "bob roles=custodian totp=yes acknowledged=yes"
    out, _ = kms_user("show", "alice")
    assert out.strip() == "alice roles=key_admin totp=yes acknowledged=no"


def test_a_new_password_voids_an_enrolment_secret_shown_under_the_old_one(kms: Any) -> None:
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from accounts.services import provision_user, start_totp_enrolment

    user, _, _ = provision_user(username="nora", roles={"key_admin"}, password="an old long passphrase")
    start_totp_enrolment(user)  # a session with the old password saw this secret
    provision_user(username="nora", roles={"key_admin"}, password="a new long passphrase 2")
    assert not TOTPDevice.objects.filter(user=user).exists()


def test_confirming_a_device_retires_other_pending_ones_and_a_second_first_device_is_refused(kms: Any) -> None:
    from django_otp.oath import totp
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from accounts.services import confirm_totp_enrolment, provision_user, start_totp_enrolment
    from kms_console.lib.errors import ApplicationError

    user, _, _ = provision_user(username="nora", roles={"key_admin"}, password="an old long passphrase")
    mine, _ = start_totp_enrolment(user)
    TOTPDevice.objects.create(user=user, name="authenticator", confirmed=False)  # another session's pending one

    def code(device: Any) -> str:
        return f"{totp(device.bin_key, device.step, device.t0, device.digits, device.drift):06d}"

    confirm_totp_enrolment(user=user, device_id=mine.pk, code=code(mine))
    assert list(TOTPDevice.objects.filter(user=user).values_list("pk", flat=True)) == [mine.pk]
    # A session with the password alone cannot confirm a first device over an existing one.
    late = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=False)
    with pytest.raises(ApplicationError) as refused:
        confirm_totp_enrolment(user=user, device_id=late.pk, code=code(late))
    assert refused.value.code == "totp_exists"
    assert TOTPDevice.objects.get(pk=mine.pk).confirmed
