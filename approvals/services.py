"""The dual-control engine: open, decide, execute, retry, cancel and expire approval requests.

Every rule is checked inside one transaction holding a row lock on the request, so two decisions on
the same request are serialised: the one that brings the M-th approval dispatches the execution and
every later one finds the request no longer pending. Refusals are audited and change nothing else.
There is no path to execution other than reaching the quorum (or a quorum of 0) - no superuser,
admin or command bypass.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts import services as accounts
from audit.services import record
from kms_console.lib.canonical import canonical_json, sha256_hex
from kms_console.lib.errors import ApplicationError, Conflict, Forbidden, NotFound
from kms_console.lib.roles import Role

from . import registry
from .models import ApprovalRequest, Decision, RequestState

logger = logging.getLogger(__name__)

MAX_JUSTIFICATION = 2000
MAX_COMMENT = 2000
# A failed execution may be retried this long after its approval; later, approvers decide afresh.
RETRY_WINDOW = dt.timedelta(days=7)
REVIEW_OPERATION = "review"


def request_digest(req: ApprovalRequest) -> str:
    """SHA-256 of the canonical JSON of everything the request binds."""
    return sha256_hex(
        canonical_json(
            {
                "id": str(req.id),
                "operation": req.operation,
                "target": {"type": req.target_type, "id": req.target_id},
                "parameters": req.parameters,
                "justification": req.justification,
                "requester": {"id": req.requester_id, "username": req.requester.get_username()},
                "policy": req.policy_ref,
                "created_at": req.created_at,
                "quorum": {
                    "approvals": req.required_approvals,
                    "approver_roles": sorted(req.approver_roles),
                    "approve_by": req.approve_by,
                    "execute_within_hours": req.execute_within_hours,
                },
            }
        )
    )


def _audit_request(action: str, req: ApprovalRequest, *, actor: Any = None, **details: Any) -> None:
    record(
        action,
        actor=actor,
        target_type="request",
        target_id=req.pk,
        details={
            "operation": req.operation,
            "target_type": req.target_type,
            "target_id": req.target_id,
            "state": req.state,
            **details,
        },
    )


def _set_state(req: ApprovalRequest, state: str, *, now: dt.datetime | None = None) -> None:
    req.state = state
    req.state_changed_at = now or timezone.now()


def _clean_justification(text: str | None) -> str:
    text = (text or "").strip()
    if not text:
        raise ApplicationError(
            "A justification is required: say why this step is needed.",
            code="justification_required",
            details={"justification": ["This field is required."]},
        )
    if len(text) > MAX_JUSTIFICATION:
        raise ApplicationError(
            f"The justification is longer than {MAX_JUSTIFICATION} characters.",
            code="justification_too_long",
            details={"justification": ["Too long."]},
        )
    return text


# --- Opening --------------------------------------------------------------------------------------


def open_request(
    *,
    operation: str,
    requester: Any,
    justification: str | None,
    target_id: str = "",
    parameters: dict[str, Any] | None = None,
    review_of: ApprovalRequest | None = None,
    internal: bool = False,
) -> ApprovalRequest:
    """Open a request; with a quorum of 0 it executes at once (and still leaves this record).

    `internal` is for requests the engine opens itself (mandatory reviews); nobody can open those
    through the console or the API, because their actions name no requester role.
    """
    action = registry.get(operation)
    roles = accounts.roles_of(requester)
    if not internal and not roles & action.requester_roles:
        record(
            "request.refused",
            actor=requester,
            details={"operation": operation, "target_id": str(target_id), "reason": "role"},
        )
        raise Forbidden(
            f"Requesting '{action.title}' needs one of the roles: {', '.join(sorted(action.requester_roles))}.",
            code="role_required",
        )
    justification = _clean_justification(justification)
    with transaction.atomic():
        prepared = action.prepare(requester, str(target_id or ""), dict(parameters or {}))
        now = timezone.now()
        quorum = prepared.quorum
        req = ApprovalRequest(
            operation=operation,
            target_type=prepared.target_type,
            target_id=prepared.target_id,
            target_label=prepared.target_label,
            parameters=prepared.parameters,
            justification=justification,
            requester=requester,
            policy_ref=quorum.policy_ref,
            created_at=now,
            required_approvals=quorum.approvals,
            approver_roles=sorted(quorum.approver_roles),
            approve_by=now + dt.timedelta(hours=quorum.approve_within_hours),
            execute_within_hours=quorum.execute_within_hours,
            state=RequestState.PENDING,
            state_changed_at=now,
            review_of=review_of,
        )
        req.digest = request_digest(req)
        try:
            with transaction.atomic():
                req.save(force_insert=True)
        except IntegrityError:
            raise Conflict(
                f"There is already a pending '{action.title}' request for {prepared.target_label or prepared.target_id}; "
                "decide or cancel it first.",
                code="request_pending",
            ) from None
        _audit_request(
            "request.opened",
            req,
            actor=requester,
            required_approvals=req.required_approvals,
            approver_roles=req.approver_roles,
            digest=req.digest,
            policy=req.policy_ref,
        )
        if req.required_approvals == 0:
            _reach_quorum(req, now)
        else:
            transaction.on_commit(lambda: notify_approvers(req.pk, reminder=False))
    return req


# --- Deciding -------------------------------------------------------------------------------------


def is_own_account(req: ApprovalRequest, user: Any) -> bool:
    """Does the request change this user's own account (their roles, say)? Then they never decide on it."""
    return req.target_type == "user" and req.target_id == str(user.pk)


def _eligibility_problem(req: ApprovalRequest, approver: Any) -> str | None:
    return accounts.approver_problem(approver, set(req.approver_roles))


def decide(
    *,
    request_id: Any,
    approver: Any,
    decision: str,
    otp: str | None,
    digest: str | None = None,
    comment: str = "",
) -> ApprovalRequest:
    """Approve or reject a request. Checks, in order, under a row lock on the request:

    1. the request is pending and not past `approve_by` (a late one is expired now);
    2. the approver did not make it, it does not change their own account, and they have not
       decided on it yet;
    3. the approver is eligible: a role the rule names, a confirmed TOTP device, and for custodians a
       current acknowledgement; auditors and service accounts never are;
    4. an approval quotes the request's digest (a rejection may, and must match if it does);
    5. the approver's TOTP code verifies (django-otp: no replays, throttled after failures).
    A refusal is audited and raised after the transaction commits, so the OTP throttle and the
    audit event stay while the request and its decisions are unchanged.
    """
    if decision not in Decision.Kind.values:
        raise ApplicationError("decision must be 'approve' or 'reject'", code="invalid_decision")
    comment = (comment or "").strip()
    if len(comment) > MAX_COMMENT:
        raise ApplicationError(f"The comment is longer than {MAX_COMMENT} characters.", code="comment_too_long")
    if decision == Decision.Kind.REJECT and not comment:
        raise ApplicationError(
            "Say why you reject the request (a comment is required).",
            code="comment_required",
            details={"comment": ["This field is required."]},
        )
    refusal: ApplicationError | None = None
    with transaction.atomic():
        req = (
            ApprovalRequest.objects.select_for_update(of=("self",))
            .select_related("requester")
            .filter(pk=request_id)
            .first()
        )
        if req is None:
            raise NotFound("No such request.")
        now = timezone.now()
        if req.state == RequestState.PENDING and now > req.approve_by:
            _expire(req, now)
            refusal = Conflict("The request expired before it collected its approvals.", code="request_expired")
        elif req.state != RequestState.PENDING:
            refusal = Conflict(
                f"The request is {req.state}; only pending requests take decisions.", code=f"request_{req.state}"
            )
        elif req.requester_id == approver.pk:
            refusal = Forbidden(
                "You made this request, and a requester never approves or rejects their own request.",
                code="self_approval",
            )
        elif is_own_account(req, approver):
            refusal = Forbidden(
                "This request changes your own account; other people must decide on it.", code="own_account"
            )
        elif req.decisions.filter(approver=approver).exists():
            refusal = Conflict("You already decided on this request; each person decides once.", code="already_decided")
        elif (problem := _eligibility_problem(req, approver)) is not None:
            refusal = Forbidden(f"You are not eligible to decide on this request: {problem}.", code="not_eligible")
        elif (decision == Decision.Kind.APPROVE or digest) and (digest or "").strip().lower() != req.digest:
            refusal = Conflict(
                "The digest you quoted does not match this request: it is not the request you reviewed. Reload it and check again.",
                code="digest_mismatch",
            )
        else:
            device = accounts.verify_user_otp(user=approver, code=otp, purpose=f"{decision} request {req.pk}")
            if device is None:
                refusal = Forbidden(
                    "The one-time password is wrong, reused or throttled; wait for a new code and try again.",
                    code="otp_invalid",
                )
            else:
                _record_decision(req, approver, decision, comment, device, now)
        if refusal is not None:
            _audit_request("request.decision_refused", req, actor=approver, decision=decision, reason=refusal.code)
    if refusal is not None:
        raise refusal
    return req


def _record_decision(
    req: ApprovalRequest, approver: Any, decision: str, comment: str, device: Any, now: dt.datetime
) -> None:
    Decision.objects.create(
        request=req,
        approver=approver,
        requester_id=req.requester_id,
        decision=decision,
        comment=comment,
        digest=req.digest,
        otp_device=device.persistent_id,
        approver_roles=sorted(accounts.roles_of(approver)),
        decided_at=now,
    )
    if decision == Decision.Kind.REJECT:
        _set_state(req, RequestState.REJECTED, now=now)
        req.finished_at = now
        req.save(update_fields=["state", "state_changed_at", "finished_at"])
        _audit_request("request.rejected", req, actor=approver, comment=comment[:200])
        return
    approvals = standing_approvals(req)
    _audit_request(
        "request.approval_recorded", req, actor=approver, approvals=approvals, required=req.required_approvals
    )
    if approvals >= req.required_approvals:
        _reach_quorum(req, now)


def standing_approvals(req: ApprovalRequest) -> int:
    """The approvals that still count: each approver must still be eligible now (active, holding a
    role the rule names, with a TOTP device and, for custodians, a current acknowledgement). An
    approval from someone who lost a role or left since does not carry a request over the line."""
    decisions = req.decisions.filter(decision=Decision.Kind.APPROVE).select_related("approver")
    return sum(1 for d in decisions if _eligibility_problem(req, d.approver) is None)


def _reach_quorum(req: ApprovalRequest, now: dt.datetime) -> None:
    """The request has its approvals: mark it approved and start its one execution."""
    _set_state(req, RequestState.APPROVED, now=now)
    req.approved_at = now
    req.execute_by = now + dt.timedelta(hours=req.execute_within_hours)
    req.save(update_fields=["state", "state_changed_at", "approved_at", "execute_by"])
    _audit_request("request.approved", req, approvals=req.required_approvals)
    _execute(req)


def _execute(req: ApprovalRequest) -> None:
    """Run the action in a savepoint; the caller holds the request's row lock.

    A refusal by the action (the key changed state meanwhile, say) fails the request without
    undoing the decisions that led to it.
    """
    action = registry.get(req.operation)
    now = timezone.now()
    if req.execute_by and now > req.execute_by:
        _fail(req, "The execution window closed before the step could start.")
        return
    _set_state(req, RequestState.EXECUTING, now=now)
    req.execution_count += 1
    req.error = ""
    req.save(update_fields=["state", "state_changed_at", "execution_count", "error"])
    _audit_request("request.executing", req, attempt=req.execution_count)
    try:
        with transaction.atomic():
            outcome = action.execute(req)
    except ApplicationError as exc:
        _fail(req, exc.message)
        return
    req.result = {**req.result, **outcome.result}
    req.save(update_fields=["result"])
    if not outcome.pending:
        _finish(req, now)


def _finish(req: ApprovalRequest, now: dt.datetime | None = None) -> None:
    now = now or timezone.now()
    _set_state(req, RequestState.EXECUTED, now=now)
    req.finished_at = now
    req.save(update_fields=["state", "state_changed_at", "finished_at"])
    _audit_request("request.executed", req, result=req.result)
    action = registry.get(req.operation)
    if action.after_executed is not None:
        action.after_executed(req)


def _fail(req: ApprovalRequest, message: str) -> None:
    now = timezone.now()
    _set_state(req, RequestState.FAILED, now=now)
    req.error = message[:2000]
    req.finished_at = now
    req.save(update_fields=["state", "state_changed_at", "error", "finished_at"])
    _audit_request("request.failed", req, error=req.error)


def _expire(req: ApprovalRequest, now: dt.datetime) -> None:
    _set_state(req, RequestState.EXPIRED, now=now)
    req.finished_at = now
    req.save(update_fields=["state", "state_changed_at", "finished_at"])
    _audit_request("request.expired", req)


# --- Asynchronous completion (called by the worker that ran the step) ------------------------------


def mark_executed(request_id: Any, result: dict[str, Any] | None = None) -> None:
    with transaction.atomic():
        req = ApprovalRequest.objects.select_for_update().get(pk=request_id)
        if req.state != RequestState.EXECUTING:
            return  # already finished: a redelivered completion changes nothing
        if result:
            req.result = {**req.result, **result}
            req.save(update_fields=["result"])
        _finish(req)


def mark_failed(request_id: Any, error: str) -> None:
    with transaction.atomic():
        req = ApprovalRequest.objects.select_for_update().get(pk=request_id)
        if req.state != RequestState.EXECUTING:
            return
        _fail(req, error)


def execution_window_open(request_id: Any) -> bool:
    """May the worker start a job of this request now?

    The window bounds the request's own execution: while the request is executing, its job must
    start before `execute_by`. A job that follows a request which finished executing - the
    destruction the sweep starts when the waiting period of an approved schedule is over - is
    not bound by it (the request's step, scheduling, ran inside its window).
    """
    req = ApprovalRequest.objects.filter(pk=request_id).only("execute_by", "state").first()
    if req is None:
        return False
    if req.state != RequestState.EXECUTING:
        return True
    return req.execute_by is None or timezone.now() <= req.execute_by


# --- Requester and custodian actions --------------------------------------------------------------


def cancel(*, request_id: Any, actor: Any) -> ApprovalRequest:
    refusal: ApplicationError | None = None
    with transaction.atomic():
        req = ApprovalRequest.objects.select_for_update().filter(pk=request_id).first()
        if req is None:
            raise NotFound("No such request.")
        if req.requester_id != actor.pk:
            raise Forbidden("Only the requester can cancel a request.", code="not_requester")
        if req.review_of_id is not None:
            # The review of an immediate suspend or compromise is mandatory: the person who acted
            # at once must not be able to withdraw it from the reviewers. The attempt is recorded.
            refusal = Conflict(
                "A mandatory review cannot be cancelled; the reviewers confirm or dispute the immediate step.",
                code="review_not_cancellable",
            )
            _audit_request("request.cancel_refused", req, actor=actor, reason=refusal.code)
    if refusal is not None:
        raise refusal
    with transaction.atomic():
        req = ApprovalRequest.objects.select_for_update().get(pk=request_id)
        if req.state != RequestState.PENDING:
            raise Conflict(
                f"The request is {req.state}; only pending requests can be cancelled.", code=f"request_{req.state}"
            )
        now = timezone.now()
        _set_state(req, RequestState.CANCELLED, now=now)
        req.finished_at = now
        req.save(update_fields=["state", "state_changed_at", "finished_at"])
        _audit_request("request.cancelled", req, actor=actor)
    return req


def retry(*, request_id: Any, actor: Any) -> ApprovalRequest:
    """Run a failed request's step again (a custodian's call). The step's own idempotency key (the
    job row) guarantees it is never carried out twice."""
    if Role.CUSTODIAN not in accounts.roles_of(actor):
        raise Forbidden("Only a custodian can retry a failed execution.", code="role_required")
    with transaction.atomic():
        req = ApprovalRequest.objects.select_for_update().filter(pk=request_id).first()
        if req is None:
            raise NotFound("No such request.")
        if req.state != RequestState.FAILED:
            raise Conflict(
                f"The request is {req.state}; only failed requests can be retried.", code=f"request_{req.state}"
            )
        now = timezone.now()
        if req.approved_at is not None and now > req.approved_at + RETRY_WINDOW:
            raise Conflict(
                f"The request was approved more than {RETRY_WINDOW.days} days ago; open a new request instead of retrying.",
                code="retry_too_late",
            )
        if req.required_approvals and standing_approvals(req) < req.required_approvals:
            raise Conflict(
                "Some of the approvals behind this request no longer stand (an approver lost a role, a device or "
                "an acknowledgement); open a new request.",
                code="approvals_lapsed",
            )
        _audit_request("request.retry", req, actor=actor)
        # A retry gets a fresh execution window from now, bounded by the rule's length.
        req.execute_by = now + dt.timedelta(hours=req.execute_within_hours)
        req.save(update_fields=["execute_by"])
        _execute(req)
    return req


# --- Mandatory reviews ----------------------------------------------------------------------------


def open_review(req: ApprovalRequest, *, approvals: int = 1, approve_within_hours: int = 72) -> ApprovalRequest:
    """A review request that custodians must decide on after an immediate action (suspend, compromise)."""
    return open_request(
        operation=REVIEW_OPERATION,
        requester=req.requester,
        justification=f"Mandatory review of the immediate '{registry.get(req.operation).title}' of {req.target_label or req.target_id}: {req.justification}",
        target_id=str(req.pk),
        parameters={"approvals": approvals, "approve_within_hours": approve_within_hours},
        review_of=req,
        internal=True,
    )


# --- Sweeps and notifications ---------------------------------------------------------------------


def expire_overdue(now: dt.datetime | None = None) -> int:
    now = now or timezone.now()
    count = 0
    for pk in ApprovalRequest.objects.filter(state=RequestState.PENDING, approve_by__lt=now).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            req = ApprovalRequest.objects.select_for_update().get(pk=pk)
            if req.state == RequestState.PENDING and req.approve_by < now:
                _expire(req, now)
                count += 1
    return count


def eligible_approvers(req: ApprovalRequest) -> list[Any]:
    decided = set(req.decisions.values_list("approver_id", flat=True))
    users = []
    for role in req.approver_roles:
        for user in accounts.users_with_role(role):
            if (
                user.pk != req.requester_id
                and not is_own_account(req, user)
                and user.pk not in decided
                and user not in users
            ):
                users.append(user)
    return users


def notify_approvers(request_id: Any, *, reminder: bool) -> int:
    req = ApprovalRequest.objects.select_related("requester").filter(pk=request_id).first()
    if req is None or req.state != RequestState.PENDING:
        return 0
    action = registry.get(req.operation)
    link = f"{settings.PUBLIC_URL}/requests/{req.pk}/"
    subject = (
        "Reminder: " if reminder else ""
    ) + f"Approval needed: {action.title} of {req.target_label or req.target_id}"
    body = (
        f"{req.requester.get_username()} asks for: {action.describe(req)}\n\n"
        f"Justification: {req.justification}\n"
        f"Approvals needed: {req.required_approvals}\n"
        f"Decide before: {req.approve_by:%Y-%m-%d %H:%M} UTC\n"
        f"Digest: {req.digest}\n\n"
        f"Review and decide here: {link}\n"
    )
    sent = 0
    for user in eligible_approvers(req):
        if not user.email:
            continue
        try:
            send_mail(subject, body, None, [user.email])
            sent += 1
        except Exception:  # a mail server outage must not fail the request
            logger.exception("could not email approver %s", user.pk)
    return sent


def send_reminders(now: dt.datetime | None = None) -> int:
    now = now or timezone.now()
    soon = now + dt.timedelta(hours=settings.KMS_APPROVAL_REMINDER_HOURS)
    count = 0
    due = ApprovalRequest.objects.filter(
        state=RequestState.PENDING, reminded_at__isnull=True, approve_by__gt=now, approve_by__lte=soon
    )
    for pk in due.values_list("pk", flat=True):
        with transaction.atomic():
            updated = ApprovalRequest.objects.filter(pk=pk, reminded_at__isnull=True).update(reminded_at=now)
            if updated:
                record("request.reminder_sent", target_type="request", target_id=pk)
        if updated:  # compare-and-set: another beat process may have sent it already
            notify_approvers(pk, reminder=True)
            count += 1
    return count
