"""Checks of dual control: every approved request carried its quorum, and the policies' rules for it."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from approvals.models import ApprovalRequest, Decision, RequestState
from lifecycle.policies import IMMEDIATE_OPERATIONS

from ..links import policy_url, request_url
from .base import WARN, Check, CheckResult, Context, Offender, result

# Requests in these states reached their quorum (or had none): what ran must have been approved.
REACHED_QUORUM = (RequestState.APPROVED, RequestState.EXECUTING, RequestState.EXECUTED, RequestState.FAILED)
# Operations that PCI DSS 3.7.6 and NIST AC-3(2) expect two people to approve, whatever a policy says.
TWO_PERSON_OPERATIONS = frozenset({"schedule_destruction", "export"})


def _label(req: dict[str, Any]) -> str:
    return f"{req['operation']} of {req['target_label'] or req['target_id'] or '-'} ({str(req['id'])[:8]})"


def _valid_approvers(req: dict[str, Any], decisions: list[dict[str, Any]]) -> tuple[set[Any], list[str]]:
    """The distinct approvers that count for this request, and why the others do not."""
    counted: set[Any] = set()
    problems = []
    eligible_roles = set(req["approver_roles"] or [])
    for decision in decisions:
        who = decision["approver__username"]
        if decision["approver_id"] == req["requester_id"]:
            problems.append(f"{who} approved their own request")
        elif decision["digest"] != req["digest"]:
            problems.append(f"{who} approved a different digest")
        elif not set(decision["approver_roles"] or []) & eligible_roles:
            problems.append(f"{who} held none of the roles {', '.join(sorted(eligible_roles))}")
        elif req["approved_at"] is not None and decision["decided_at"] > req["approved_at"]:
            problems.append(f"{who} approved after the request was already approved")
        else:
            counted.add(decision["approver_id"])
    return counted, problems


def dual_control(ctx: Context) -> CheckResult:
    requests = list(
        ApprovalRequest.objects.filter(state__in=REACHED_QUORUM)
        .values(
            "id",
            "operation",
            "target_label",
            "target_id",
            "requester_id",
            "required_approvals",
            "approver_roles",
            "digest",
            "approved_at",
            "policy_ref",
        )
        .order_by("created_at")
    )
    by_request: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for decision in Decision.objects.filter(request__state__in=REACHED_QUORUM, decision=Decision.Kind.APPROVE).values(
        "request_id", "approver_id", "approver__username", "approver_roles", "digest", "decided_at"
    ):
        by_request[decision["request_id"]].append(decision)
    reviewed = set(ApprovalRequest.objects.filter(review_of__isnull=False).values_list("review_of_id", flat=True))
    offenders = []
    short = 0
    for req in requests:
        counted, problems = _valid_approvers(req, by_request.get(req["id"], []))
        url = request_url(req["id"])
        required = req["required_approvals"]
        if len(counted) < required:
            short += 1
            detail = f"; {'; '.join(problems)}" if problems else ""
            reason = f"ran with {len(counted)} valid approval(s) of the {required} required{detail}"
            offenders.append(Offender("request", _label(req), reason, url))
        if required == 0 and req["operation"] not in IMMEDIATE_OPERATIONS:
            reason = "ran without any approval (only suspend and compromise may act at once)"
            offenders.append(Offender("request", _label(req), reason, url, severity=WARN))
        elif required == 0 and req["id"] not in reviewed:
            reason = "acted at once but no mandatory review was opened"
            offenders.append(Offender("request", _label(req), reason, url, severity=WARN))
        if req["operation"] in TWO_PERSON_OPERATIONS and required < 2:
            reason = (
                f"its policy ({req['policy_ref'] or 'unknown'}) allowed {required} approval(s) where two are expected"
            )
            offenders.append(Offender("request", _label(req), reason, url, severity=WARN))
    total = len(requests)
    figure = (
        f"{total - short} of {total} approved requests ran after their quorum of "
        "distinct eligible approvers other than the requester"
    )
    return result("dual_control", figure, offenders, applicable=bool(requests))


def policy_rules(ctx: Context) -> CheckResult:
    policies = sorted(ctx.policies().values(), key=lambda v: v.policy.name)
    counts = ctx.keys_per_policy()
    offenders = []
    weak = set()
    for version in policies:
        for operation, rule in sorted((version.quorum or {}).items()):
            approvals = int(rule.get("approvals", 0))
            if approvals == 0 and operation not in IMMEDIATE_OPERATIONS:
                reason = f"'{operation}' runs without any approval"
            elif operation in TWO_PERSON_OPERATIONS and approvals < 2:
                reason = f"'{operation}' needs only {approvals} approval (two are expected)"
            else:
                continue
            weak.add(version.policy_id)
            keys = counts.get(version.policy_id, 0)
            offenders.append(
                Offender(
                    "policy",
                    version.ref,
                    f"{reason}; governs {keys} key{'s' if keys != 1 else ''}",
                    policy_url(version.policy.name),
                    severity=WARN,
                )
            )
    figure = (
        f"{len(policies) - len(weak)} of {len(policies)} policies require two "
        "approvals for destruction and export and at least one for every operation but suspend and compromise"
    )
    return result("policy_rules", figure, offenders, applicable=bool(policies))


def destruction_wait(ctx: Context) -> CheckResult:
    policies = sorted(ctx.policies().values(), key=lambda v: v.policy.name)
    counts = ctx.keys_per_policy()
    offenders = []
    for version in policies:
        if version.destruction_wait_days == 0:
            keys = counts.get(version.policy_id, 0)
            reason = (
                f"destroys keys as soon as destruction is approved (0-day waiting period); governs "
                f"{keys} key{'s' if keys != 1 else ''}"
            )
            offenders.append(Offender("policy", version.ref, reason, policy_url(version.policy.name), severity=WARN))
    shortest = min((v.destruction_wait_days for v in policies), default=0)
    figure = (
        f"{len(policies) - len(offenders)} of {len(policies)} policies keep a "
        f"waiting period before destruction (shortest: {shortest} days)"
    )
    return result("destruction_wait", figure, offenders, applicable=bool(policies))


CHECKS = (
    Check(
        "dual_control",
        "Sensitive operations approved by M distinct eligible custodians",
        "Every request that ran (approved, executing, executed or failed) carried at least the number of "
        "approvals its rule required, each from a different person other than the requester, holding a role "
        "the rule names, quoting the request's digest, given before the request was approved. Operations that "
        "ran without approval other than suspend and compromise, immediate actions without their mandatory "
        "review, and destructions or exports whose policy allowed fewer than two approvals are warnings.",
        dual_control,
    ),
    Check(
        "policy_rules",
        "Policies demand dual control",
        "The current version of every key policy asks two approvals for scheduling a destruction and for an "
        "export, and at least one approval for every operation except suspend and compromise (which act at "
        "once and open a mandatory review).",
        policy_rules,
    ),
    Check(
        "destruction_wait",
        "Waiting period before destruction",
        "No current policy version sets a destruction waiting period of 0 days: during the waiting period a "
        "key scheduled for destruction can be used by nothing and the schedule can still be cancelled.",
        destruction_wait,
    ),
)
