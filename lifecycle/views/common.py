"""Helpers the console pages share: who may request an operation, opening a request from a form,
and telling the requester what happens next."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse

from approvals import registry
from approvals import services as approvals
from approvals.models import ApprovalRequest, RequestState
from kms_console.lib.errors import ApplicationError
from kms_console.lib.roles import Role
from kms_console.lib.web import add_service_error, user_roles

from ..forms import (
    RequestForm,
)
from ..models import Key

# --- Helpers --------------------------------------------------------------------------------------


def _check_may_request(request: HttpRequest, operation: str) -> registry.Action:
    """The operation's action, if the user holds a role that may request it (403 otherwise)."""
    try:
        action = registry.get(operation)
    except ApplicationError:
        raise Http404("No such operation.") from None
    if not user_roles(request.user) & action.requester_roles:
        roles = ", ".join(sorted(Role(role).label.lower() for role in action.requester_roles))
        raise PermissionDenied(f"Requesting “{action.title}” is for these roles: {roles}.")
    return action


def _open_request(
    request: HttpRequest, form: RequestForm, *, operation: str, target_id: str = ""
) -> ApprovalRequest | None:
    """Open the request; a refusal becomes a form error and None is returned."""
    try:
        return approvals.open_request(
            operation=operation,
            requester=request.user,
            justification=form.cleaned_data["justification"],
            target_id=target_id,
            parameters=form.parameters(),
        )
    except ApplicationError as exc:
        add_service_error(form, exc)
        return None


def _after_open(request: HttpRequest, req: ApprovalRequest, *, key: Key | None = None) -> HttpResponse:
    """Tell the requester what happens next, then show the request (or the key it changed at once)."""
    title = registry.get(req.operation).title
    request_url = reverse("approvals:request_detail", args=[req.pk])
    if req.state == RequestState.EXECUTED:
        text = f"“{title}” took effect at once: the policy needs no approval for it."
        if req.reviews.exists():
            text += " Custodians were asked to review it."
        messages.success(request, text)
        return redirect(reverse("lifecycle:key_detail", args=[key.pk]) if key is not None else request_url)
    if req.state == RequestState.FAILED:
        messages.error(request, f"The request was recorded but could not be carried out: {req.error}")
        return redirect(request_url)
    if req.state == RequestState.PENDING:
        roles = " or ".join(Role(role).label.lower() for role in req.approver_roles if role in Role.values)
        count = req.required_approvals
        messages.success(
            request,
            f"Your request is open. It needs {count} approval{'s' if count != 1 else ''} from a {roles} "
            f"before {req.approve_by:%Y-%m-%d %H:%M} UTC. It waits in their inbox, and those with an email "
            "address are sent one.",
        )
    else:
        messages.success(request, f"Your request was approved and is running: “{title}”.")
    return redirect(request_url)
