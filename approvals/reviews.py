"""The `review` operation: custodians confirm an immediate action (suspend, compromise) after the fact."""

from __future__ import annotations

from typing import Any

from audit.services import record
from kms_console.lib.errors import ApplicationError
from kms_console.lib.roles import Role

from . import registry
from .models import ApprovalRequest


def _prepare(requester: Any, target_id: str, parameters: dict[str, Any]) -> registry.Prepared:
    reviewed = ApprovalRequest.objects.filter(pk=target_id).first() if target_id else None
    if reviewed is None:
        raise ApplicationError("a review needs the request it reviews")
    approvals = max(1, int(parameters.get("approvals", 1)))  # a review always needs a reviewer
    hours = int(parameters.get("approve_within_hours", 72))
    return registry.Prepared(
        target_type="request",
        target_id=str(reviewed.pk),
        target_label=f"{reviewed.operation} of {reviewed.target_label or reviewed.target_id}",
        parameters={"reviewed_request": str(reviewed.pk), "reviewed_operation": reviewed.operation},
        quorum=registry.QuorumRule(
            approvals=approvals,
            approver_roles=(Role.CUSTODIAN,),
            approve_within_hours=hours,
            execute_within_hours=1,
            policy_ref=reviewed.policy_ref,
        ),
    )


def _execute(req: Any) -> registry.Outcome:
    record(
        "request.reviewed",
        target_type="request",
        target_id=req.target_id,
        details={"review": str(req.pk), "reviewed_operation": req.parameters.get("reviewed_operation", "")},
    )
    return registry.Outcome(result={"reviewed": req.target_id})


def _describe(req: Any) -> str:
    # target_label already reads "<operation> of <target>" (see _prepare).
    return (
        f"Confirm, after the fact, the immediate {req.target_label}. "
        "Approving records the review; rejecting records that the reviewers dispute it."
    )


REVIEW = registry.Action(
    operation="review",
    title="Review of an immediate action",
    requester_roles=frozenset(),  # opened by the engine only
    prepare=_prepare,
    execute=_execute,
    describe=_describe,
)
