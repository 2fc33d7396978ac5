"""Reads of the dual-control engine for the inbox and the requester's own list."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from accounts import services as accounts
from kms_console.lib.roles import Role

from .models import FINAL_STATES, ApprovalRequest, RequestState

# Roles that never decide on anything, whatever a rule names (SPEC §3).
NEVER_APPROVE = frozenset({Role.AUDITOR, Role.API_CLIENT})


def requests_waiting_for(user: Any) -> QuerySet[ApprovalRequest]:
    """Pending requests `user` may still decide on, soonest deadline first.

    A request waits for the user when it is pending and not past `approve_by`, the user did not
    make it, it does not change the user's own account, the user has not decided on it yet, and
    one of the user's roles is among the request's approver roles. Auditors and service accounts are never waited for. Whether the user's second
    factor and acknowledgement are in order is checked when they decide (the console asks them to
    fix it first), so the inbox still shows what is waiting.

    Two queries: the candidates' ids and roles, then the queryset the caller evaluates (it can
    still be filtered and paginated).
    """
    roles = accounts.roles_of(user)
    if not roles or roles & NEVER_APPROVE:
        return ApprovalRequest.objects.none()
    candidates = (
        ApprovalRequest.objects.filter(state=RequestState.PENDING, approve_by__gte=timezone.now())
        .exclude(requester_id=user.pk)
        .exclude(decisions__approver_id=user.pk)
        .exclude(target_type="user", target_id=str(user.pk))  # changes to their own account
        .values_list("pk", "approver_roles")
    )
    # approver_roles is a JSON list; matching it in Python keeps SQLite and PostgreSQL alike.
    ids = [pk for pk, approver_roles in candidates if roles & set(approver_roles or ())]
    return ApprovalRequest.objects.filter(pk__in=ids).select_related("requester").order_by("approve_by", "created_at")


def open_requests_of(user: Any) -> QuerySet[ApprovalRequest]:
    """The user's own requests that are not finished: pending, approved, executing, or failed (a
    custodian may still retry a failed one). Newest first."""
    if user is None or not getattr(user, "is_authenticated", False):
        return ApprovalRequest.objects.none()
    return (
        ApprovalRequest.objects.filter(requester_id=user.pk)
        .exclude(state__in=FINAL_STATES)
        .select_related("requester")
        .order_by("-created_at")
    )
