"""Helpers of the compliance tests: estates built straight in the database, the token, report parsing.

Checks read data; most of their tests build exactly the rows a case needs with the ORM (the
lifecycle and approvals tests already prove the services make such rows). The HSM checks use the
session's real SoftHSM token: keys made through the engine (`tests.lifecycle.helpers`), objects
made or removed on the token directly to fake the failures.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import zlib
from base64 import a85decode
from typing import Any

from django.db import connection

from approvals.models import ApprovalRequest, Decision, RequestState
from approvals.services import request_digest
from audit.services import record
from compliance.assessment import assess
from compliance.checks.base import CheckResult
from lifecycle.hsm import default_backend
from lifecycle.models import Key, KeyVersion
from lifecycle.states import KeyState


def run(check_id: str, **kwargs: Any) -> CheckResult:
    """One check's result, computed now."""
    return assess(check_ids=[check_id], **kwargs).results[check_id]


def labels(result: CheckResult) -> set[str]:
    return {o.label for o in result.offenders}


def orm_key(
    name: str,
    *,
    kms: Any,
    owner: Any,
    now: dt.datetime,
    algorithm: str = "AES-256",
    usage: str = "encrypt_decrypt",
    state: str = KeyState.ACTIVE,
    policy: Any = None,
    originator_days: int = 730,
    recipient_days: int = 1825,
    activated_days_ago: int = 10,
    cka_id: str | None = None,
    kcv: str = "a1b2c3",
    extractable: bool = True,
    generated: bool = True,
) -> Key:
    """A key with one version, straight in the database (no HSM object unless `cka_id` names one)."""
    activated = now - dt.timedelta(days=activated_days_ago)
    key = Key.objects.create(
        name=name,
        algorithm=algorithm,
        usage=usage,
        policy=policy or kms.policy,
        hsm=kms.hsm,
        owner=owner,
        state=state,
        state_changed_at=activated,
        created_at=activated,
        destroyed_at=now if state == KeyState.DESTROYED else None,
    )
    active_like = state != KeyState.PRE_ACTIVATION
    version = KeyVersion.objects.create(
        key=key,
        number=1,
        state=state,
        hsm=kms.hsm,
        cka_id=cka_id or secrets.token_hex(16),
        kcv=kcv,
        extractable=extractable,
        created_at=activated,
        generated_at=activated if generated else None,
        activated_at=activated if active_like else None,
        originator_until=activated + dt.timedelta(days=originator_days) if active_like else None,
        recipient_until=activated + dt.timedelta(days=recipient_days) if active_like else None,
        destroyed_at=now if state == KeyState.DESTROYED else None,
    )
    key.primary_version = version
    key.save(update_fields=["primary_version"])
    return key


def bulk_keys(count: int, *, kms: Any, owner: Any, now: dt.datetime, prefix: str = "bulk") -> None:
    """`count` active keys with a version each, in a handful of queries (for the query-count tests)."""
    keys = Key.objects.bulk_create(
        [
            Key(
                name=f"{prefix}-{i:05d}",
                algorithm="AES-256",
                usage="encrypt_decrypt",
                policy=kms.policy,
                hsm=kms.hsm,
                owner=owner,
                state=KeyState.ACTIVE,
                state_changed_at=now,
                created_at=now,
            )
            for i in range(count)
        ]
    )
    versions = KeyVersion.objects.bulk_create(
        [
            KeyVersion(
                key=key,
                number=1,
                state=KeyState.ACTIVE,
                hsm=kms.hsm,
                cka_id=secrets.token_hex(16),
                kcv="a1b2c3",
                extractable=True,
                created_at=now,
                generated_at=now,
                activated_at=now,
                originator_until=now + dt.timedelta(days=730),
                recipient_until=now + dt.timedelta(days=1825),
            )
            for key in keys
        ]
    )
    for key, version in zip(keys, versions, strict=True):
        key.primary_version = version
    Key.objects.bulk_update(keys, ["primary_version"], batch_size=500)


def approved_request(
    operation: str,
    *,
    requester: Any,
    approvers: list[Any],
    required: int,
    now: dt.datetime,
    state: str = RequestState.EXECUTED,
    approver_roles: tuple[str, ...] = ("custodian",),
    target_label: str = "some-key",
    policy_ref: str = "standard v1",
    digest_override: dict[Any, str] | None = None,
) -> ApprovalRequest:
    """A request as the engine leaves it after execution, with the given decisions (for rule-breaking history)."""
    req = ApprovalRequest(
        operation=operation,
        target_type="key",
        target_id=secrets.token_hex(8),
        target_label=target_label,
        parameters={},
        justification="history for the compliance tests",
        requester=requester,
        policy_ref=policy_ref,
        created_at=now - dt.timedelta(hours=2),
        required_approvals=required,
        approver_roles=list(approver_roles),
        approve_by=now + dt.timedelta(hours=70),
        execute_within_hours=24,
        state=state,
        state_changed_at=now,
        approved_at=now - dt.timedelta(minutes=30),
        finished_at=now,
    )
    req.digest = request_digest(req)
    req.save(force_insert=True)
    for approver in approvers:
        Decision.objects.create(
            request=req,
            approver=approver,
            requester=requester,
            decision="approve",
            digest=(digest_override or {}).get(approver.pk, req.digest),
            otp_device="otp_totp.totpdevice/1",
            approver_roles=sorted(g.name for g in approver.groups.all()),
            decided_at=now - dt.timedelta(hours=1),
        )
    return req


def mark_dual_control_running() -> None:
    """What the first approved request records: from here on, role grants must be dual-controlled."""
    record("request.approved", target_type="request", target_id="bootstrap", details={"operation": "generate"})


def security_failure(action: str = "auth.login_failed", username: str = "mallory") -> None:
    record(action, details={"username": username, "reason": "bad password"})


# --- The token ------------------------------------------------------------------------------------


def clean_token(kms: Any) -> int:
    """Destroy the objects earlier tests left on the session's token.

    The database rolls back after every test, the token does not: an object no KeyVersion row
    names (and that is not the console's own) is a leftover of an earlier test. Returns how many.
    """
    from compliance.checks.hsm import infrastructure_labels

    known = set(KeyVersion.objects.values_list("cka_id", flat=True))
    keep_labels = infrastructure_labels()
    backend = default_backend()
    gone = 0
    for info in backend.inventory():
        if info.cka_id in known or info.label in keep_labels or not info.cka_id:
            continue
        gone += backend.destroy(bytes.fromhex(info.cka_id))
    return gone


# --- Reports --------------------------------------------------------------------------------------

_STREAM = re.compile(rb"stream\r?\n(?P<body>.*?)\s*endstream", re.S)
_TEXT = re.compile(rb"\((?P<text>(?:\\.|[^\\)])*)\)\s*Tj")


def pdf_text(data: bytes) -> str:
    """The text a PDF shows, read with the standard library (ReportLab's ASCII85 + Flate page streams)."""
    assert data.startswith(b"%PDF-"), "not a PDF"
    assert data.rstrip().endswith(b"%%EOF"), "the PDF is truncated"
    lines = []
    for match in _STREAM.finditer(data):
        body = match.group("body")
        info = data[max(0, match.start() - 200) : match.start()].rsplit(b"obj", 1)[-1]  # this object's dictionary
        if b"/ASCII85Decode" in info:
            body = a85decode(body.strip().removeprefix(b"<~").removesuffix(b"~>"))
        if b"/FlateDecode" in info:
            body = zlib.decompress(body)
        for text in _TEXT.finditer(body):
            raw = text.group("text")
            raw = re.sub(rb"\\([()\\])", rb"\1", raw)
            lines.append(raw.decode("latin-1"))
    return "\n".join(lines)


def sql_vendor() -> str:
    return connection.vendor
