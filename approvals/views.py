"""Console pages of the dual-control engine: the request lists (inbox, mine, all), the request page
with approve/reject, cancel and retry, and the page that lists what the user may request.

The engine decides (`approvals.services`); these views show its answers. A refusal (self-approval,
a wrong or replayed one-time code, a changed digest, an expired request) is shown on the request
page next to the form, and recorded in the audit trail by the engine.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from django.contrib import messages
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.dateparse import parse_datetime
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from kms_console.lib.errors import ApplicationError
from kms_console.lib.roles import APPROVER_ROLES, Role
from kms_console.lib.web import (
    add_service_error,
    console_view,
    empty_choice,
    forget_value,
    paginate,
    sentence,
    user_roles,
)

from . import registry, services
from .filtersets import ApprovalRequestFilterSet
from .forms import DecisionForm
from .models import ACTIVE_STATES, ApprovalRequest, Decision, RequestState
from .selectors import open_requests_of, requests_waiting_for

# Who may post a decision through the console: approvers, and key administrators, whose attempt on
# their own request (posted by hand: they are shown no form) meets the engine's refusal in words and
# is audited. Everyone else gets 403 before the engine is asked.
DECISION_FORM_ROLES = APPROVER_ROLES | {Role.KEY_ADMIN}

LIST_VIEWS = ("waiting", "mine", "all")
# Key steps requested from a key's page ("Request a change"); backups, exports and restores are
# requested from the Backups pages.
KEY_PAGE_OPERATIONS = (
    "activate",
    "rotate",
    "suspend",
    "resume",
    "deactivate",
    "compromise",
    "schedule_destruction",
    "cancel_destruction",
    "process_exception",
    "grant",
)
BACKUP_OPERATIONS = ("backup", "export", "restore", "escrow", "import")


def _describe(req: ApprovalRequest) -> str:
    """The action's plain-words sentence; a request whose operation is no longer registered still shows."""
    try:
        return registry.get(req.operation).describe(req)
    except (ApplicationError, ObjectDoesNotExist, KeyError, TypeError, ValueError):
        return f"Run the operation “{req.operation}” on {req.target_label or req.target_id}."


def _title(operation: str) -> str:
    try:
        return registry.get(operation).title
    except ApplicationError:
        return operation.replace("_", " ").capitalize()


def _parameter_rows(parameters: dict[str, Any]) -> list[dict[str, Any]]:
    """Parameters as label/value rows; nested values (policy settings) as indented JSON."""
    rows = []
    for name, value in parameters.items():
        if isinstance(value, dict):
            rows.append({"name": name, "json": json.dumps(value, indent=2, sort_keys=True)})
        elif isinstance(value, list):
            rows.append({"name": name, "value": ", ".join(str(v) for v in value) or "—"})
        else:
            rows.append({"name": name, "value": "—" if value in (None, "") else _readable(name, value)})
    return rows


def _readable(name: str, value: Any) -> Any:
    """A date-time parameter (`…_at`, `until`) as the console writes times ("2026-12-04 09:00:00 UTC").
    Free text is shown as given, whatever it looks like; the digest covers the exact values, which the
    request's JSON keeps."""
    if not (name.endswith("_at") or name == "until") or not isinstance(value, str):
        return value
    try:
        parsed = parse_datetime(value)
    except ValueError:  # well formed but impossible (month 13): show it as it is
        return value
    if parsed is None or parsed.tzinfo is None:
        return value
    return f"{parsed.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


def with_approval_count(queryset: QuerySet[ApprovalRequest]) -> QuerySet[ApprovalRequest]:
    """Annotate each request with how many approvals it has (one query for the whole list)."""
    return queryset.annotate(approval_count=Count("decisions", filter=Q(decisions__decision=Decision.Kind.APPROVE)))


def may_request_anything(roles: set[str]) -> bool:
    return any(roles & registry.get(op).requester_roles for op in registry.operations())


@console_view()
@require_http_methods(["GET", "HEAD"])
def request_list(request: HttpRequest) -> HttpResponse:
    user = request.user
    roles = user_roles(user)
    approver = bool(roles & APPROVER_ROLES)
    # Approvers land on their inbox, key administrators on what they asked for, others on everything.
    default_view = "waiting" if approver else "mine" if Role.KEY_ADMIN in roles else "all"
    view = request.GET.get("view") or default_view
    if view not in LIST_VIEWS:
        view = "all"
    filter_form = None
    if view == "waiting":
        queryset = requests_waiting_for(user)
    elif view == "mine":
        queryset = ApprovalRequest.objects.filter(requester=user).select_related("requester").order_by("-created_at")
    else:
        filterset = ApprovalRequestFilterSet(
            request.GET or None,
            queryset=ApprovalRequest.objects.select_related("requester").order_by("-created_at"),
        )
        filter_form = filterset.form
        empty_choice(filter_form.fields["state"], "Any state", RequestState.choices)
        filter_form.fields["operation"].widget.attrs.update(placeholder="e.g. generate")
        filter_form.fields["requester"].label = "Requester"
        filter_form.fields["requester"].widget.attrs.update(placeholder="username")
        for hidden in ("target_type", "target_id"):
            filter_form.fields[hidden].widget = filter_form.fields[hidden].hidden_widget()
        queryset = filterset.qs
    page = paginate(request, with_approval_count(queryset))
    if view == "waiting":
        request._kms_waiting_count = page.paginator.count  # the nav badge reuses it
    rows = [{"req": req, "title": _title(req.operation)} for req in page]
    context = {
        "view": view,
        "page_obj": page,
        "rows": rows,
        "filter_form": filter_form,
        "filtered": view == "all" and any(value for name, value in request.GET.items() if name not in {"page", "view"}),
        "approver": approver,
        "may_request": may_request_anything(roles),
    }
    return render(request, "approvals/request_list.html", context)


def _detail_context(request: HttpRequest, req: ApprovalRequest, form: DecisionForm | None) -> dict[str, Any]:
    user = request.user
    roles = user_roles(user)
    decisions = list(req.decisions.select_related("approver").order_by("decided_at", "id"))
    approvals = sum(1 for d in decisions if d.decision == Decision.Kind.APPROVE)
    mine = next((d for d in decisions if d.approver_id == user.pk), None)
    is_requester = req.requester_id == user.pk
    eligible_role = bool(roles & set(req.approver_roles))
    pending = req.state == RequestState.PENDING
    # Approvers decide. The requester never may (the engine refuses and records an attempt posted by
    # hand): they get a note saying why instead of a form.
    show_form = pending and mine is None and eligible_role and not is_requester and bool(roles & DECISION_FORM_ROLES)
    if show_form and form is None:
        form = DecisionForm(initial={"digest": req.digest})
    jobs = list(req.jobs.select_related("key").order_by("created_at")) if hasattr(req, "jobs") else []
    return {
        "req": req,
        "title": _title(req.operation),
        "description": _describe(req),
        "parameters": _parameter_rows(req.parameters),
        "result": _parameter_rows(req.result) if req.result else [],
        "decisions": decisions,
        "approvals": approvals,
        "approval_slots": [index < approvals for index in range(req.required_approvals)],
        "mine": mine,
        "is_requester": is_requester,
        "eligible_role": eligible_role,
        "form": form if show_form else None,
        "requester_note": pending and is_requester,
        # A mandatory review is not the requester's to withdraw: it checks their own immediate step.
        "may_cancel": pending and is_requester and req.review_of_id is None,
        "may_retry": req.state == RequestState.FAILED and Role.CUSTODIAN in roles,
        "jobs": jobs,
        "jobs_active": any(job.status in ("queued", "running") for job in jobs),
        "reviews": list(req.reviews.order_by("created_at")),
        "progress": _progress(req),
        "approver_roles": [Role(r).label for r in req.approver_roles if r in Role.values],
        "key_id": req.target_id if req.target_type == "key" and req.target_id else req.result.get("key_id"),
    }


def _progress(req: ApprovalRequest) -> Any:
    """What an approved request still waits for, when its action says (None: the worker)."""
    if req.state not in (RequestState.APPROVED, RequestState.EXECUTING):
        return None
    action = registry.get(req.operation) if req.operation in registry.operations() else None
    return action.progress(req) if action is not None and action.progress is not None else None


def _get_request(request_id: uuid.UUID) -> ApprovalRequest:
    return get_object_or_404(ApprovalRequest.objects.select_related("requester", "review_of"), pk=request_id)


@sensitive_post_parameters("otp")
@console_view()
@require_http_methods(["GET", "HEAD", "POST"])
def request_detail(request: HttpRequest, request_id: uuid.UUID) -> HttpResponse:
    """The request page. Its decision form posts here: a refusal is shown on this page (this URL),
    and a recorded decision redirects back to it (POST-redirect-GET), so a reload never resends."""
    req = _get_request(request_id)
    if request.method == "POST":
        return _decide(request, req)
    return render(request, "approvals/request_detail.html", _detail_context(request, req, None))


@sensitive_post_parameters("otp")
@console_view(*DECISION_FORM_ROLES)
@require_POST
def request_decide(request: HttpRequest, request_id: uuid.UUID) -> HttpResponse:
    """The former target of the decision form (pages opened before it moved still post here)."""
    return _decide(request, _get_request(request_id))


def _decide(request: HttpRequest, req: ApprovalRequest) -> HttpResponse:
    """Record the user's approval or rejection through the engine; its refusals become form errors."""
    if not user_roles(request.user) & DECISION_FORM_ROLES:
        raise PermissionDenied("Your roles do not decide on requests: custodians and security officers do.")
    request_id = req.pk
    form = DecisionForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            req = services.decide(
                request_id=req.pk,
                approver=request.user,
                decision=data["decision"],
                otp=data["otp"],
                digest=data["digest"],
                comment=data.get("comment") or "",
            )
        except ApplicationError as exc:
            if exc.code == "otp_invalid":
                form.add_error("otp", sentence(exc.message))
            else:
                add_service_error(form, exc)
            req = _get_request(request_id)  # the engine may have expired it meanwhile
        else:
            req.refresh_from_db()  # an HSM job may have finished on commit
            messages.success(request, _decided_message(req, data["decision"]))
            return redirect("approvals:request_detail", request_id=req.pk)
    forget_value(form, "otp")
    context = _detail_context(request, req, form)
    if context["form"] is None:
        # The request can no longer take this user's decision (decided, expired…): say why above the page.
        for error in form.non_field_errors():
            messages.error(request, error)
    return render(request, "approvals/request_detail.html", context)


def _decided_message(req: ApprovalRequest, decision: str) -> str:
    if decision == Decision.Kind.REJECT:
        return "You rejected the request. It will not run."
    if req.state == RequestState.PENDING:
        approvals = req.decisions.filter(decision=Decision.Kind.APPROVE).count()
        missing = req.required_approvals - approvals
        return (
            f"You approved the request ({approvals} of {req.required_approvals}). "
            f"It needs {missing} more approval{'s' if missing != 1 else ''}."
        )
    if req.state == RequestState.EXECUTED:
        return "You approved the request. The quorum is complete and it was carried out."
    if req.state == RequestState.FAILED:
        return f"You approved the request and the quorum is complete, but carrying it out failed: {req.error}"
    progress = _progress(req)
    if progress is not None:
        return f"You approved the request. The quorum is complete. {progress.text}"
    return "You approved the request. The quorum is complete and it is being carried out now."


@console_view()
@require_POST
def request_cancel(request: HttpRequest, request_id: uuid.UUID) -> HttpResponse:
    req = _get_request(request_id)
    try:
        services.cancel(request_id=req.pk, actor=request.user)
    except ApplicationError as exc:
        messages.error(request, sentence(exc.message))
    else:
        messages.success(request, "You cancelled the request. It will not run.")
    return redirect("approvals:request_detail", request_id=req.pk)


@console_view()
@require_POST
def request_retry(request: HttpRequest, request_id: uuid.UUID) -> HttpResponse:
    req = _get_request(request_id)
    try:
        req = services.retry(request_id=req.pk, actor=request.user)
    except ApplicationError as exc:
        messages.error(request, sentence(exc.message))
    else:
        if req.state == RequestState.FAILED:
            messages.error(request, f"The retry failed again: {req.error}")
        else:
            messages.success(request, "The step is running again; this page shows its progress.")
    return redirect("approvals:request_detail", request_id=req.pk)


@console_view()
@require_http_methods(["GET", "HEAD"])
def request_new(request: HttpRequest) -> HttpResponse:
    """What this user may ask for, and where each form is."""
    roles = user_roles(request.user)

    def may(operation: str) -> bool:
        try:
            return bool(roles & registry.get(operation).requester_roles)
        except ApplicationError:
            return False

    context = {
        "may_generate": may("generate"),
        "key_ops": [registry.get(op).title for op in KEY_PAGE_OPERATIONS if may(op)],
        "may_backups": any(may(op) for op in BACKUP_OPERATIONS),
        "may_policy": may("policy_change"),
        "may_roles": may("custodian_change"),
        "may_hsm": may("hsm_change"),
        "open_mine": list(with_approval_count(open_requests_of(request.user))[:10]),
        "active_states": ACTIVE_STATES,
    }
    return render(request, "approvals/request_new.html", context)
