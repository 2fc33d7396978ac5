"""Helpers of the dual-control tests: a pending request, and the check that a refusal changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from approvals.models import ApprovalRequest
from approvals.services import decide, open_request
from audit.models import AuditEvent
from kms_console.lib.errors import ApplicationError
from tests.conftest import fresh_otp


def open_generation(requester: Any, name: str = "k", **extra: Any) -> ApprovalRequest:
    """A pending request to generate an AES-256 key (standard policy: 2 custodian approvals)."""
    return open_request(
        operation="generate",
        requester=requester,
        justification="a key for the payments service",
        parameters={"name": name, "algorithm": "AES-256", "usage": "encrypt_decrypt", **extra},
    )


def snapshot(req: ApprovalRequest) -> tuple[Any, ...]:
    """Everything a refusal must leave as it was: the request's state and times, and its decisions."""
    req = ApprovalRequest.objects.get(pk=req.pk)
    decisions = list(req.decisions.order_by("id").values_list("approver__username", "decision", "digest"))
    return (
        req.state,
        req.state_changed_at,
        req.approved_at,
        req.finished_at,
        req.execution_count,
        req.result,
        req.error,
        decisions,
    )


@contextmanager
def refused(req: ApprovalRequest, error: type[ApplicationError], code: str) -> Iterator[None]:
    """The block raises `error` with `code`, the refusal is audited, and the request is unchanged."""
    before = snapshot(req)
    refusals = AuditEvent.objects.filter(action="request.decision_refused", target_id=str(req.pk)).count()
    with pytest.raises(error) as excinfo:
        yield
    assert excinfo.value.code == code, excinfo.value.message
    assert snapshot(req) == before
    assert AuditEvent.objects.filter(action="request.decision_refused", target_id=str(req.pk)).count() == refusals + 1


def attempt(req: ApprovalRequest, who: Any, clock: Any, *, otp: Any = "fresh", digest: Any = "right", **kw: Any) -> Any:
    """`who` decides (approves unless decision= says otherwise) with a fresh code and the right digest,
    unless `otp` or `digest` give others."""
    return decide(
        request_id=req.pk,
        approver=who,
        decision=kw.pop("decision", "approve"),
        otp=fresh_otp(who, clock) if otp == "fresh" else otp,
        digest=req.digest if digest == "right" else digest,
        **kw,
    )
