"""Helpers shared by the lifecycle and dual-control tests: drive keys through the real engine.

Everything here goes the way production goes: a request is opened, custodians approve it with
their TOTP codes, the approved step runs (on-commit job dispatch, eager Celery) on the session's
real SoftHSM token. Only set-up steps (extra policies) call services directly.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.test import TestCase

from accounts.services import acknowledge
from approvals.models import ApprovalRequest
from approvals.services import open_request
from audit.models import AuditEvent
from lifecycle.hsm import default_backend
from lifecycle.models import Key, PolicyVersion
from lifecycle.policies import standard_settings
from lifecycle.services.policies import policy_apply
from lifecycle.states import KeyState
from lifecycle.sweep import sweep
from tests.conftest import approve

# The key types of the catalogue: (algorithm, usage).
KEY_TYPES: list[tuple[str, str]] = [
    ("AES-256", "encrypt_decrypt"),
    ("AES-256", "wrap_unwrap"),
    ("HMAC-SHA256", "mac"),
    ("RSA-2048", "sign_verify"),
    ("EC-P256", "sign_verify"),
]
KEY_TYPE_IDS = [f"{algorithm}/{usage}" for algorithm, usage in KEY_TYPES]
ASYMMETRIC = {"RSA-2048", "EC-P256"}
ABSENT = object()


@contextmanager
def on_commit() -> Iterator[list[Any]]:
    """Run on-commit callbacks (job dispatch, emails) as if the test's transaction had committed."""
    with TestCase.captureOnCommitCallbacks(execute=True) as callbacks:
        yield callbacks


def generate_key(
    requester: Any,
    approvers: Sequence[Any],
    clock: Any,
    *,
    name: str = "k",
    algorithm: str = "AES-256",
    usage: str = "encrypt_decrypt",
    policy: str | None = None,
    activate_at: Any = ABSENT,
) -> Key:
    """Request, approve and run the generation of a key; returns it (active unless activate_at says otherwise)."""
    parameters: dict[str, Any] = {"name": name, "algorithm": algorithm, "usage": usage}
    if policy is not None:
        parameters["policy"] = policy
    if activate_at is not ABSENT:
        parameters["activate_at"] = activate_at.isoformat() if isinstance(activate_at, dt.datetime) else activate_at
    with on_commit():
        req = open_request(
            operation="generate",
            requester=requester,
            justification=f"a {algorithm} key for the tests",
            parameters=parameters,
        )
        approve(req, *approvers[: req.required_approvals], clock=clock)
    return Key.objects.get(name=name)


def run_operation(
    operation: str,
    key: Key,
    requester: Any,
    approvers: Sequence[Any],
    clock: Any,
    *,
    parameters: dict[str, Any] | None = None,
    justification: str | None = None,
) -> ApprovalRequest:
    """Open `operation` on the key, approve it with as many approvers as its rule needs, run it."""
    with on_commit():
        req = open_request(
            operation=operation,
            requester=requester,
            justification=justification or f"{operation} for the tests",
            target_id=str(key.pk),
            parameters=parameters or {},
        )
        if req.required_approvals:
            approve(req, *approvers[: req.required_approvals], clock=clock)
    req.refresh_from_db()
    key.refresh_from_db()
    return req


def run_sweep(clock: Any) -> dict[str, int]:
    with on_commit():
        return sweep(clock.now())


def destroy_now(key: Key, requester: Any, approvers: Sequence[Any], clock: Any) -> ApprovalRequest:
    """Schedule destruction, let the waiting period pass, and let the sweep destroy the key."""
    req = run_operation("schedule_destruction", key, requester, approvers, clock)
    assert key.destroy_after is not None, req.error
    wait_out_destruction(key, clock)
    return req


def wait_out_destruction(key: Key, clock: Any) -> None:
    """Move time past the key's `destroy_after` and let the sweep start (and run) its destruction."""
    clock.advance(seconds=max(0.0, (key.destroy_after - clock.now()).total_seconds()) + 1)
    run_sweep(clock)
    key.refresh_from_db()


def bring_to(state: str, cast: Any, clock: Any, *, algorithm: str, usage: str, name: str = "k") -> Key:
    """A key of this type in `state`, reached through the engine from generation."""
    approvers = [cast.bob, cast.carol, cast.dave]
    if state == KeyState.PRE_ACTIVATION:
        return generate_key(cast.alice, approvers, clock, name=name, algorithm=algorithm, usage=usage, activate_at=None)
    key = generate_key(cast.alice, approvers, clock, name=name, algorithm=algorithm, usage=usage)
    assert key.state == KeyState.ACTIVE
    operation = {
        KeyState.SUSPENDED: "suspend",
        KeyState.DEACTIVATED: "deactivate",
        KeyState.COMPROMISED: "compromise",
    }.get(state)
    if operation is not None:
        run_operation(operation, key, cast.alice, approvers, clock)
    elif state == KeyState.DESTROYED:
        destroy_now(key, cast.alice, approvers, clock)
    assert key.state == state
    return key


def token_ids() -> set[str]:
    """The CKA_IDs (hex) of every object on the session's default token."""
    return {row.cka_id for row in default_backend().inventory()}


def token_objects(cka_id: str) -> list[str]:
    """The object classes on the token under one CKA_ID (a pair has a private and a public half)."""
    return sorted(row.object_class for row in default_backend().inventory() if row.cka_id == cka_id)


def make_policy(name: str, **overrides: Any) -> PolicyVersion:
    """A policy next to `standard` (set-up only: in production this is an approved policy_change)."""
    return policy_apply(name=name, settings={**standard_settings(), **overrides}, actor=None)


def quorum(**rules: int) -> dict[str, dict[str, Any]]:
    """A quorum map overriding the approvals of some operations (others keep the defaults)."""
    base = standard_settings()["quorum"]
    return {op: ({**rule, "approvals": rules[op]} if op in rules else rule) for op, rule in base.items()}


def renew_acknowledgements(*custodians: Any) -> None:
    """Custodians acknowledge again (after a long jump in time their acknowledgement lapsed)."""
    for custodian in custodians:
        acknowledge(user=custodian)


def audit_actions(target_id: Any) -> list[str]:
    return list(AuditEvent.objects.filter(target_id=str(target_id)).order_by("seq").values_list("action", flat=True))
