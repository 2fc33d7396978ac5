"""Issue 5, item 7: a whole lifecycle leaves an event for every step, and not one secret anywhere.

The run goes the production way: the console's sign-in pages, requests approved by custodians with
their TOTP codes, jobs on the real SoftHSM token, key use through the API, destruction by the beat
sweep with the clock moved on. One key's value is known to the test: it is wrapped in software and
unwrapped into the HSM under the CKA_ID the console chose for the key's first version, before the
generation job runs (which then finds it there, as a re-run would). Afterwards every event, every
checkpoint, every job row and every API answer is searched for the PINs, the API tokens, the
passwords, every OTP code used, the TOTP secrets and the known key bytes (hex and base64).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from io import StringIO
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap
from django.conf import settings
from django.core.management import call_command
from django.test import Client, TestCase
from django_otp.oath import totp

from accounts import services as accounts
from approvals.models import ApprovalRequest, RequestState
from approvals.services import cancel, decide, expire_overdue, open_request
from audit import services as audit
from audit.models import AuditEvent
from kms_console.lib.errors import ApplicationError
from lifecycle.hsm import default_backend
from lifecycle.models import Job, Key
from lifecycle.services.steps import object_label
from lifecycle.states import KeyState
from lifecycle.sweep import sweep
from tests.api.conftest import API, on_commit
from tests.audit.helpers import all_rows_text
from tests.conftest import PASSWORD, fresh_otp, make_user, totp_key

pytestmark = pytest.mark.django_db

KNOWN_KEY = hashlib.sha256(b"a key value this test knows").digest()
PLAINTEXT = b"PAN 4111 1111 1111 1111 exp 12/29"
WRONG_PASSWORD = "not-the-password-of-alice-42"
WRONG_OTP = "135790"


class Run:
    """Drives the engine like the people in the cast, keeping every secret that crossed the wire."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.otp_codes: list[str] = [WRONG_OTP]
        self.tokens: list[str] = []
        self.responses: list[str] = []

    def code(self, user: Any) -> str:
        code = fresh_otp(user, self.clock)
        self.otp_codes.append(code)
        return code

    def approve(self, req: ApprovalRequest, *approvers: Any) -> ApprovalRequest:
        for approver in approvers:
            decide(request_id=req.pk, approver=approver, decision="approve", otp=self.code(approver), digest=req.digest)
        req.refresh_from_db()
        return req

    def request(
        self, operation: str, requester: Any, approvers: list[Any], key: Key | None = None, **parameters: Any
    ) -> ApprovalRequest:
        with on_commit():
            req = open_request(
                operation=operation,
                requester=requester,
                justification=f"{operation} in the audit scan",
                target_id=str(key.pk) if key is not None else "",
                parameters=parameters,
            )
            self.approve(req, *approvers[: req.required_approvals])
        req.refresh_from_db()
        return req

    def api(self, user: Any, scopes: list[str]) -> Any:
        from rest_framework.test import APIClient

        _, raw = accounts.create_token(user=user, scopes=scopes, actor=user)
        self.tokens.append(raw)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
        return client

    def keep(self, response: Any) -> Any:
        self.responses.append(response.content.decode())
        return response


def import_known_key(cka_id: bytes, label: str, *, extractable: bool) -> bytes:
    """Put KNOWN_KEY on the token under `cka_id`, the way test_hsm_pkcs11 brings in a known key.

    Returns the KEK's value, which the test then knows too.
    """
    backend = default_backend()
    recipient = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    recipient_pem = (
        recipient.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    kek = hashlib.sha256(b"kek for the known key").digest()[:16]
    backend.generate("AES-256", kek, usage="wrap_unwrap", label="scan-kek", extractable=True)
    encrypted_transport, wrapped_kek = backend.wrap_for_recipient(kek, recipient_pem)
    transport = recipient.decrypt(
        encrypted_transport, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    )
    kek_value = aes_key_unwrap(transport, wrapped_kek)
    backend.unwrap(
        kek,
        aes_key_wrap(kek_value, KNOWN_KEY),
        algorithm="AES-256",
        usage="encrypt_decrypt",
        new_cka_id=cka_id,
        label=label,
        extractable=extractable,
    )
    return kek_value


def console_sign_in_and_out(run: Run, user: Any) -> None:
    """Through the console's pages: a wrong password, the right one, a wrong code, the right one, sign-out."""
    client = Client()
    client.post("/accounts/login/", {"username": user.username, "password": WRONG_PASSWORD})
    client.post("/accounts/login/", {"username": user.username, "password": PASSWORD})
    client.post("/accounts/otp/", {"code": WRONG_OTP})
    run.clock.advance(seconds=2)  # django-otp throttles for a second after a failure
    client.post("/accounts/otp/", {"code": run.code(user)})
    client.post("/accounts/logout/")


def enrol_a_new_custodian(run: Run, olivia: Any, custodians: list[Any]) -> Any:
    """frank enrols his authenticator and accepts the responsibilities; a role change makes him custodian."""
    frank = make_user("frank", set(), totp=False)
    device, _ = accounts.start_totp_enrolment(frank)
    run.secrets_extra = [device.key]
    code = f"{totp(device.bin_key, device.step, device.t0, device.digits, device.drift):06d}"
    run.otp_codes.append(code)
    accounts.confirm_totp_enrolment(user=frank, device_id=device.pk, code=code)
    req = run.request("custodian_change", olivia, custodians, username="frank", roles=["custodian"])
    assert req.state == RequestState.EXECUTED, req.error
    accounts.acknowledge(user=frank)
    return frank


@pytest.fixture
def scan(kms: Any, clock: Any, hsm_token: Any) -> SimpleNamespace:
    """The whole run; returns what it learnt and what it must not find."""
    cast = SimpleNamespace(**{name: make_user(name) for name in ("alice", "bob", "carol", "dave", "olivia", "erin")})
    cast.svc = make_user("svc")
    custodians = [cast.bob, cast.carol, cast.dave]
    run = Run(clock)
    run.secrets_extra = []

    console_sign_in_and_out(run, cast.alice)

    # 1. Generate with approvals; the first version gets the known key value.
    with TestCase.captureOnCommitCallbacks(execute=False) as callbacks:
        req = open_request(
            operation="generate",
            requester=cast.alice,
            justification="card data key",
            parameters={"name": "card-dek", "algorithm": "AES-256", "usage": "encrypt_decrypt"},
        )
        run.approve(req, cast.bob, cast.carol)
    key = Key.objects.get(name="card-dek")
    version = key.versions.get(number=1)  # primary once the HSM made it
    kek_value = import_known_key(version.cka_id_bytes, object_label(key, version), extractable=version.extractable)
    with on_commit():
        for callback in callbacks:
            callback()
    key.refresh_from_db()
    assert key.state == KeyState.ACTIVE

    # 2. Use through the API: a grant, encrypt, decrypt, and a refused use.
    assert run.request(
        "grant", cast.alice, custodians, key, grantee="svc", operations=["encrypt", "decrypt"]
    ).state == (RequestState.EXECUTED)
    svc = run.api(cast.svc, ["use", "read"])
    encrypted = run.keep(
        svc.post(f"{API}/keys/{key.pk}/encrypt/", {"plaintext": base64.b64encode(PLAINTEXT).decode()}, format="json")
    ).json()
    blob = base64.b64decode(encrypted["ciphertext"].split(":", 2)[2])
    # The console's key really is the known one: software decrypts what the HSM encrypted.
    assert AESGCM(KNOWN_KEY).decrypt(blob[:12], blob[12:], b"") == PLAINTEXT
    decrypted = svc.post(f"{API}/keys/{key.pk}/decrypt/", {"ciphertext": encrypted["ciphertext"]}, format="json")
    assert base64.b64decode(decrypted.json()["plaintext"]) == PLAINTEXT
    refused = run.keep(svc.post(f"{API}/keys/{key.pk}/sign/", {"message": "aGk="}, format="json"))
    assert refused.status_code in {400, 403, 409}
    for path in (f"keys/{key.pk}/", f"keys/{key.pk}/versions/", f"jobs/{Job.objects.filter(key=key).first().pk}/"):
        run.keep(run.api(cast.erin, ["read"]).get(f"{API}/{path}"))

    # 3. Rotate, suspend (immediate, with a review), resume.
    assert run.request("rotate", cast.alice, custodians, key).state == RequestState.EXECUTED
    assert run.request("suspend", cast.alice, custodians, key).state == RequestState.EXECUTED
    assert run.request("resume", cast.alice, custodians, key).state == RequestState.EXECUTED

    # 4. Requests cancelled, refused for a wrong OTP, rejected, failed, expired.
    pending = open_request(
        operation="deactivate", requester=cast.alice, justification="changed my mind", target_id=str(key.pk)
    )
    with pytest.raises(ApplicationError):
        decide(request_id=pending.pk, approver=cast.bob, decision="approve", otp=WRONG_OTP, digest=pending.digest)
    cancel(request_id=pending.pk, actor=cast.alice)
    rejected = open_request(
        operation="deactivate", requester=cast.alice, justification="not needed", target_id=str(key.pk)
    )
    decide(request_id=rejected.pk, approver=cast.carol, decision="reject", otp=run.code(cast.carol), comment="no")
    other = generate_plain(run, cast.alice, custodians, "other-key")
    run.request("suspend", cast.alice, custodians, other)
    with on_commit():
        doomed = open_request(
            operation="resume", requester=cast.alice, justification="resume it", target_id=str(other.pk)
        )
    run.request("deactivate", cast.alice, custodians, other)
    assert run.approve(doomed, cast.bob, cast.carol).state == RequestState.FAILED

    # 5. A token revoked, then used; tokens made by the command line too.
    revoked = run.api(cast.erin, ["read"])
    accounts.revoke_token(token=accounts.authenticate_token(run.tokens[-1]), actor=cast.erin)
    assert revoked.get(f"{API}/audit/events/").status_code == 401
    out = StringIO()
    call_command("kms_token", "create", "--user", "svc", "--scope", "read", stdout=out)
    run.tokens.append(re.search(r"kms_[A-Za-z0-9_-]+", out.getvalue()).group(0))

    # 6. People: a new custodian enrols, is given the role (dual control) and acknowledges.
    enrol_a_new_custodian(run, cast.olivia, custodians)

    # 7. Destruction: scheduled with approvals, carried out by the sweep once the wait is over.
    assert run.request("schedule_destruction", cast.alice, custodians, key).state == RequestState.EXECUTED
    clock.advance(days=31)
    expire_overdue()
    with on_commit():
        sweep()
    key.refresh_from_db()
    assert key.state == KeyState.DESTROYED

    # 8. The trail read, verified and exported; checkpoints signed along the way.
    audit.sign_checkpoint()
    erin = run.api(cast.erin, ["read"])
    run.keep(erin.get(f"{API}/audit/events/", {"page_size": 500}))
    run.keep(erin.get(f"{API}/audit/verify/"))
    run.keep(erin.get(f"{API}/audit/checkpoints/"))
    exported = StringIO()
    call_command("kms_audit", "export", stdout=exported, stderr=StringIO())
    run.responses.append(exported.getvalue())

    secrets = {
        "hsm user pin": hsm_token.pin,
        "hsm so pin": hsm_token.so_pin,
        "second hsm pin": hsm_token.other_pin,
        "password": PASSWORD,
        "wrong password": WRONG_PASSWORD,
        "django secret key": settings.SECRET_KEY,
        "known key hex": KNOWN_KEY.hex(),
        "known key HEX": KNOWN_KEY.hex().upper(),
        "known key base64": base64.b64encode(KNOWN_KEY).decode(),
        "known key base64url": base64.urlsafe_b64encode(KNOWN_KEY).decode().rstrip("="),
        "kek hex": kek_value.hex(),
        "kek base64": base64.b64encode(kek_value).decode(),
    }
    secrets |= {f"api token {n}": raw for n, raw in enumerate(run.tokens)}
    secrets |= {f"totp secret of {n}": totp_key(n) for n in ("alice", "bob", "carol", "dave", "olivia", "erin")}
    secrets |= {f"totp secret {n}": value for n, value in enumerate(run.secrets_extra)}
    return SimpleNamespace(run=run, key=key, secrets=secrets, plaintext=PLAINTEXT)


def generate_plain(run: Run, requester: Any, approvers: list[Any], name: str) -> Key:
    req = run.request("generate", requester, approvers, name=name, algorithm="AES-256", usage="encrypt_decrypt")
    assert req.state == RequestState.EXECUTED, req.error
    return Key.objects.get(name=name)


# --- What must be there -----------------------------------------------------------------------------

EXPECTED_ACTIONS = {
    # sign-in
    "auth.login_failed",
    "auth.login",
    "auth.logout",
    "otp.failed",
    "otp.enrolled",
    "custodian.acknowledged",
    "user.roles_changed",
    # requests
    "request.opened",
    "request.approval_recorded",
    "request.approved",
    "request.executing",
    "request.executed",
    "request.decision_refused",
    "request.rejected",
    "request.cancelled",
    "request.failed",
    "request.expired",
    # keys and jobs
    "key.created",
    "key.state_changed",
    "key.version_state_changed",
    "key.rotation_started",
    "key.destruction_scheduled",
    "key.grant_changed",
    "key.use_denied",
    "job.queued",
    "job.started",
    "job.succeeded",
    # tokens
    "token.created",
    "token.revoked",
    "token.denied",
    # the trail itself
    "audit.checkpoint_signed",
    "audit.read",
    "audit.verified",
    "audit.exported",
}


def test_every_step_of_the_lifecycle_is_on_record(scan: SimpleNamespace) -> None:
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert actions >= EXPECTED_ACTIONS, sorted(EXPECTED_ACTIONS - actions)
    # Every NIST transition of the key, in order.
    moves = [
        (e.details["from"], e.details["to"])
        for e in AuditEvent.objects.filter(action="key.state_changed", target_id=str(scan.key.pk)).order_by("seq")
    ]
    assert moves == [
        (None, "pre_activation"),
        ("pre_activation", "active"),
        ("active", "suspended"),
        ("suspended", "active"),
        ("active", "destroyed"),
    ]
    # Who did it and through which channel.
    login = AuditEvent.objects.filter(action="auth.login").get()
    assert (login.actor, login.via) == ("alice", "web")
    assert AuditEvent.objects.filter(action="key.use_denied", actor="svc", via="api").exists()
    destroyed = AuditEvent.objects.filter(action="key.state_changed", details__to="destroyed").get()
    assert destroyed.actor == "system"
    # The whole trail verifies, checkpoints included.
    result = audit.verify_chain()
    assert result.ok, result.problems
    assert result.checkpoints_checked >= 2


def _found(text: str, secret: str) -> bool:
    if secret.isdigit() and len(secret) <= 8:
        # Short codes: only as a value of their own, not as digits inside a hash or an id.
        return re.search(rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])", text) is not None
    return secret in text


def _stored_text() -> str:
    jobs = list(Job.objects.values("params", "result", "error"))
    requests = list(ApprovalRequest.objects.values("parameters", "result", "error", "justification"))
    return all_rows_text() + json.dumps({"jobs": jobs, "requests": requests}, default=str)


def test_no_secret_reaches_the_trail_the_job_rows_or_the_api(scan: SimpleNamespace) -> None:
    stored = _stored_text()
    answers = "\n".join(scan.run.responses)
    assert len(scan.run.otp_codes) > 15  # the run used plenty of codes
    leaks = [name for name, secret in scan.secrets.items() if _found(stored, secret) or _found(answers, secret)]
    leaks += [f"otp code {code}" for code in scan.run.otp_codes if _found(stored, code) or _found(answers, code)]
    assert leaks == []
    # The data itself is no secret of the HSM, but it has no business in the trail or the job rows.
    for form in (scan.plaintext.decode(), base64.b64encode(scan.plaintext).decode()):
        assert form not in stored


def test_the_scan_would_see_a_secret_if_one_were_recorded(scan: SimpleNamespace) -> None:
    """The search itself works: a value planted under a harmless name is found, code and key alike."""
    audit.record("test.planted", details={"note": f"pin {scan.secrets['hsm user pin']}", "n": scan.run.otp_codes[-1]})
    stored = _stored_text()
    assert _found(stored, scan.secrets["hsm user pin"])
    assert _found(stored, scan.run.otp_codes[-1])
    assert not _found(stored, "999999x")
