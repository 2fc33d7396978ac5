"""Helpers of the API tests: keys made the production way, and checks of the error shape.

Keys are generated through the real engine (a request, custodians approving with their TOTP codes,
the job running on commit on the session's SoftHSM token); only policies for special cases are
applied directly, as `kms_setup` does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import TestCase

from approvals.models import ApprovalRequest
from approvals.services import open_request
from lifecycle.models import Key
from lifecycle.policies import MIN_ONE_APPROVAL, standard_settings
from lifecycle.services.policies import policy_apply
from tests.conftest import api_client, approve

API = "/api/v1"


@contextmanager
def on_commit() -> Iterator[list[Any]]:
    """Run on-commit callbacks (job dispatch on the eager Celery app) as if the transaction committed."""
    with TestCase.captureOnCommitCallbacks(execute=True) as callbacks:
        yield callbacks


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The answer has this status and the SPEC's error shape; returns the inner error object."""
    assert response.status_code == status, (response.status_code, getattr(response, "data", response.content))
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    if code is not None:
        assert error["code"] == code, error
    return error


def make_key(
    requester: Any,
    approvers: Sequence[Any],
    clock: Any,
    *,
    name: str = "k1",
    algorithm: str = "AES-256",
    usage: str = "encrypt_decrypt",
    policy: str | None = None,
) -> Key:
    """Request, approve and run the generation of an active key."""
    parameters: dict[str, Any] = {"name": name, "algorithm": algorithm, "usage": usage}
    if policy:
        parameters["policy"] = policy
    with on_commit():
        req = open_request(
            operation="generate", requester=requester, justification="a key for the API tests", parameters=parameters
        )
        approve(req, *approvers[: req.required_approvals], clock=clock)
    return Key.objects.get(name=name)


def run(
    operation: str,
    key: Key,
    requester: Any,
    approvers: Sequence[Any],
    clock: Any,
    parameters: dict[str, Any] | None = None,
) -> ApprovalRequest:
    """Request a lifecycle step on a key and approve it as far as its quorum needs."""
    with on_commit():
        req = open_request(
            operation=operation,
            requester=requester,
            justification=f"{operation} for the API tests",
            target_id=str(key.pk),
            parameters=parameters or {},
        )
        if req.required_approvals:
            approve(req, *approvers[: req.required_approvals], clock=clock)
    req.refresh_from_db()
    return req


def grant(key: Key, grantee: Any, operations: list[str], requester: Any, approvers: Sequence[Any], clock: Any) -> None:
    """A dual-controlled grant of key use to a service account."""
    req = run("grant", key, requester, approvers, clock, {"grantee": grantee.username, "operations": operations})
    assert req.state == "executed", req.error


def lenient_policy(name: str = "lenient", **overrides: Any) -> None:
    """A policy whose operations need no approval where a policy may say so (as an operator might set
    up for a lab); the steps of `MIN_ONE_APPROVAL` keep one."""
    settings = standard_settings()
    settings["quorum"] = {
        op: {**rule, "approvals": 1 if op in MIN_ONE_APPROVAL else 0} for op, rule in settings["quorum"].items()
    }
    settings.update(overrides)
    policy_apply(name=name, settings=settings, actor=None)


@pytest.fixture
def cast(
    alice: Any, bob: Any, carol: Any, dave: Any, olivia: Any, erin: Any, mallory: Any, svc: Any
) -> SimpleNamespace:
    """The whole cast; `approvers` in the order they approve."""
    return SimpleNamespace(
        alice=alice,
        bob=bob,
        carol=carol,
        dave=dave,
        olivia=olivia,
        erin=erin,
        mallory=mallory,
        svc=svc,
        approvers=[bob, carol, dave],
    )


@pytest.fixture
def aes_key(cast: SimpleNamespace, clock: Any) -> Key:
    return make_key(cast.alice, cast.approvers, clock, name="payments-dek")


@pytest.fixture
def svc_client(cast: SimpleNamespace) -> Any:
    return api_client(cast.svc, scopes=["use", "read"])


def iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")
