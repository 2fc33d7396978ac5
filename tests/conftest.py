"""The test world: a throwaway SoftHSM2 token per session, eager Celery, and a named cast.

Cast (every human has a confirmed TOTP device with a fixed secret; custodians have acknowledged):
    alice   key_admin         - asks for things
    bob     custodian         - first approver
    carol   custodian         - second approver
    dave    custodian         - third approver
    olivia  security_officer  - policies, roles, HSMs
    erin    auditor           - reads everything, changes nothing
    mallory (no role)         - an outsider with an account
    svc     api_client        - a service account
Time: `clock` freezes time at 2026-12-04 09:00 UTC; `fresh_otp` moves it 30 s on when a user's
last code was from the current time step (django-otp refuses replays within a step).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import responsibilities
from accounts.models import Acknowledgement

TOKEN_LABEL = "kms-test"
OTHER_TOKEN_LABEL = "kms-test-other"
# A token nobody logs in to, for tests of refused PINs: login is per process and token, so once
# any test logged in to a token, a wrong PIN for it can no longer be observed in this process.
PIN_TOKEN_LABEL = "kms-test-pins"
START = dt.datetime(2026, 12, 4, 9, 0, 0, tzinfo=dt.UTC)

CAST: dict[str, set[str]] = {
    "alice": {"key_admin"},
    "bob": {"custodian"},
    "carol": {"custodian"},
    "dave": {"custodian"},
    "olivia": {"security_officer"},
    "erin": {"auditor"},
    "mallory": set(),
    "svc": {"api_client"},
}
HUMANS_WITH_TOTP = {"alice", "bob", "carol", "dave", "olivia", "erin", "mallory"}
PASSWORD = "correct horse battery staple"


def require_services() -> bool:
    return os.environ.get("KMS_REQUIRE_SERVICES", "").lower() in {"1", "true", "yes", "on"}


def totp_key(name: str) -> str:
    """A fixed 20-byte TOTP secret per cast member (hex), so codes are reproducible vectors."""
    return hashlib.sha1(f"kms-test-totp-{name}".encode()).hexdigest()


# --- Session-wide: the HSM token and Celery -------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def hsm_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A fresh SoftHSM2 token for this test session (softhsm2-util takes ~20 ms)."""
    from lifecycle import hsm
    from lifecycle.hsm import softhsm

    if shutil.which("softhsm2-util") is None:
        pytest.exit("softhsm2-util is missing: the tests run against a real SoftHSM2 token (apt install softhsm2)", 2)
    root: Path = tmp_path_factory.mktemp("softhsm")
    conf = root / "softhsm2.conf"
    softhsm.write_config(conf, root / "tokens")
    so_pin, user_pin = softhsm.new_pin(), softhsm.new_pin()
    softhsm.init_token(conf, TOKEN_LABEL, so_pin, user_pin)
    # A second token, for "another registered HSM" (restore elsewhere, wrong PINs). SoftHSM lists
    # tokens when it initialises, so both are made before the first HSM call.
    other_pin = softhsm.new_pin()
    softhsm.init_token(conf, OTHER_TOKEN_LABEL, softhsm.new_pin(), other_pin)
    pins_pin = softhsm.new_pin()
    softhsm.init_token(conf, PIN_TOKEN_LABEL, softhsm.new_pin(), pins_pin)
    # The library reads SOFTHSM2_CONF when it initialises, lazily at the first HSM call.
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ["KMS_HSM_PIN"] = user_pin
    os.environ["KMS_HSM2_PIN"] = other_pin
    settings.KMS_SOFTHSM2_CONF = str(conf)
    settings.KMS_HSM_TOKEN_LABEL = TOKEN_LABEL
    settings.KMS_HSM_PIN_FILE = str(root / "no-such-pin-file")
    hsm._backends.clear()
    yield SimpleNamespace(
        conf=conf,
        dir=root,
        label=TOKEN_LABEL,
        pin=user_pin,
        so_pin=so_pin,
        other_label=OTHER_TOKEN_LABEL,
        pins_label=PIN_TOKEN_LABEL,
        pins_pin=pins_pin,
        other_pin=other_pin,
    )


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory: pytest.TempPathFactory) -> None:
    """On SQLite, test in a file rather than in shared-cache memory: a real worker thread or the live
    server's thread then waits for locks (busy timeout) instead of failing with "table is locked"."""
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


@pytest.fixture(scope="session", autouse=True)
def celery_eager() -> None:
    """Tasks run in the test's thread when they are sent (after commit). Worker tests turn this off."""
    from kms_console.celery import app

    app.conf.task_always_eager = True


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_audit_context() -> Iterator[None]:
    """Each test starts as "system": an actor a request set (API token authentication) must not
    leak into the next test through the context variable."""
    from audit import context

    token = context._current.set(context.ActorContext())
    yield
    context._current.reset(token)


@pytest.fixture(autouse=True)
def _locmem_email(settings: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


@pytest.fixture(autouse=True, scope="session")
def _flush_around_audit_guard() -> Iterator[None]:
    """Transactional tests end with a flush (DELETE on SQLite), which the audit triggers refuse.
    Let exactly that flush through; every test still sees the triggers in force."""
    from django.core.management.commands import flush

    from audit.db import bypass_append_only

    original = flush.Command.handle

    def handle(self: Any, **options: Any) -> Any:
        with bypass_append_only():
            return original(self, **options)

    flush.Command.handle = handle
    yield
    flush.Command.handle = original


# --- The installation: default HSM, standard policy, audit signing key ----------------------------


@pytest.fixture
def kms(db: Any, hsm_token: SimpleNamespace) -> SimpleNamespace:
    """What `manage.py kms_setup` makes: the default HSM row, the audit signing key, policy `standard`."""
    from django.utils import timezone

    from lifecycle.audit_signer import ensure_signing_key
    from lifecycle.models import Hsm, Policy
    from lifecycle.policies import STANDARD_POLICY, standard_settings
    from lifecycle.services.policies import policy_apply

    hsm, _ = Hsm.objects.get_or_create(
        name="default",
        defaults={
            "module": settings.KMS_PKCS11_MODULE,
            "token_label": TOKEN_LABEL,
            "pin_env": "KMS_HSM_PIN",
            "pin_file": "",
            "is_default": True,
            "registered_at": timezone.now(),
        },
    )
    ensure_signing_key()
    if not Policy.objects.filter(name=STANDARD_POLICY).exists():
        policy_apply(name=STANDARD_POLICY, settings=standard_settings(), actor=None)
    return SimpleNamespace(hsm=hsm, policy=Policy.objects.get(name=STANDARD_POLICY), token=hsm_token)


# --- The cast -------------------------------------------------------------------------------------


def make_user(name: str, roles: set[str] | None = None, *, totp: bool | None = None, acknowledged: bool = True) -> Any:
    roles = CAST.get(name, set()) if roles is None else roles
    user = get_user_model().objects.create_user(username=name, email=f"{name}@example.test", password=PASSWORD)
    user.groups.set([Group.objects.get_or_create(name=role)[0] for role in sorted(roles)])
    if totp if totp is not None else name in HUMANS_WITH_TOTP or roles & {"key_admin", "custodian", "security_officer"}:
        TOTPDevice.objects.create(user=user, name="authenticator", key=totp_key(name), confirmed=True)
    if "custodian" in roles and acknowledged:
        Acknowledgement.objects.create(
            user=user,
            text_version=responsibilities.VERSION,
            text_digest=responsibilities.DIGEST,
            acknowledged_at=dt.datetime.now(dt.UTC),
        )
    return user


@pytest.fixture
def alice(kms: SimpleNamespace) -> Any:
    return make_user("alice")


@pytest.fixture
def bob(kms: SimpleNamespace) -> Any:
    return make_user("bob")


@pytest.fixture
def carol(kms: SimpleNamespace) -> Any:
    return make_user("carol")


@pytest.fixture
def dave(kms: SimpleNamespace) -> Any:
    return make_user("dave")


@pytest.fixture
def olivia(kms: SimpleNamespace) -> Any:
    return make_user("olivia")


@pytest.fixture
def erin(kms: SimpleNamespace) -> Any:
    return make_user("erin")


@pytest.fixture
def mallory(kms: SimpleNamespace) -> Any:
    return make_user("mallory")


@pytest.fixture
def svc(kms: SimpleNamespace) -> Any:
    return make_user("svc")


# --- Time and one-time passwords ------------------------------------------------------------------


class Clock:
    """Frozen time that tests move on explicitly."""

    def __init__(self, traveller: Any) -> None:
        self._traveller = traveller

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def advance(self, **delta: float) -> None:
        self._traveller.shift(dt.timedelta(**delta))


@pytest.fixture
def clock() -> Iterator[Clock]:
    with time_machine.travel(START, tick=False) as traveller:
        yield Clock(traveller)


def otp_code(user: Any) -> str:
    """The user's current TOTP code, computed from the device's secret (a fixed test vector)."""
    device = TOTPDevice.objects.get(user=user, confirmed=True)
    return f"{totp(device.bin_key, device.step, device.t0, device.digits, device.drift):0{device.digits}d}"


def fresh_otp(user: Any, clock: Clock) -> str:
    """A code the device will accept now: move past the time step of its last accepted code."""
    device = TOTPDevice.objects.get(user=user, confirmed=True)
    current_t = int((clock.now().timestamp() - device.t0) // device.step)
    if device.last_t is not None and device.last_t >= current_t:
        clock.advance(seconds=device.step * (device.last_t - current_t + 1))
    return otp_code(user)


def approve(request: Any, *approvers: Any, clock: Clock) -> Any:
    """Each approver approves with a fresh code and the right digest. Returns the refreshed request."""
    from approvals import services

    for approver in approvers:
        services.decide(
            request_id=request.pk,
            approver=approver,
            decision="approve",
            otp=fresh_otp(approver, clock),
            digest=request.digest,
        )
    request.refresh_from_db()
    return request


# --- Clients --------------------------------------------------------------------------------------


def web_client(user: Any) -> Client:
    """A console session signed in with its second factor verified."""
    client = Client()
    client.force_login(user)
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    if device is not None:
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = device.persistent_id
        session.save()
    return client


def api_client(user: Any, scopes: list[str] | None = None) -> Any:
    """A DRF client that authenticates with a fresh API token of the user."""
    from rest_framework.test import APIClient

    from accounts.services import create_token

    _, raw = create_token(user=user, scopes=scopes)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    client.raw_token = raw
    return client


# --- A real Celery worker (integration tests) -----------------------------------------------------


@pytest.fixture
def celery_worker(transactional_db: Any) -> Iterator[Any]:
    """A real worker (solo pool, in a thread of this process) on the test Redis broker."""
    import redis
    from celery.contrib.testing.worker import start_worker

    from kms_console.celery import app

    url = os.environ.get("KMS_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
    try:
        redis.Redis.from_url(url.replace("redis+socket://", "unix://"), socket_connect_timeout=2).ping()
    except Exception as exc:
        message = f"the worker tests need Redis at {url}: {exc}"
        if require_services():
            pytest.fail(message)
        pytest.skip(message)
    app.conf.update(broker_url=url, task_always_eager=False, broker_connection_retry_on_startup=True)
    # Eager sends of earlier tests opened the app's producer pool on the broker configured then
    # (Celery acquires a producer even in eager mode); drop it so sends go to this broker.
    _drop_broker_pools(app)
    try:
        with start_worker(
            app, pool="solo", loglevel="WARNING", perform_ping_check=False, shutdown_timeout=15
        ) as worker:
            yield worker
    finally:
        app.conf.task_always_eager = True
        _drop_broker_pools(app)


def _drop_broker_pools(app: Any) -> None:
    """Forget the app's broker connection and producer pools; the next send looks them up again for
    the broker configured now. (Not closed: kombu keeps pools per broker URL and hands them out again.)"""
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
