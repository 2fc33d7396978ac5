"""The people of the console: roles, second factor and acknowledgement, and role-change requests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import responsibilities
from accounts.models import Acknowledgement
from approvals import registry
from approvals.models import ACTIVE_STATES, ApprovalRequest
from kms_console.lib.roles import PRIVILEGED_ROLES, Role
from kms_console.lib.web import console_view, user_roles

from ..forms import (
    RoleChangeForm,
)
from .common import _after_open, _check_may_request, _open_request

# --- Custodians -----------------------------------------------------------------------------------


def _people() -> Any:
    """Every active account with its roles, TOTP status and latest acknowledgement of the current text."""
    latest_ack = (
        Acknowledgement.objects.filter(user=OuterRef("pk"), text_version=responsibilities.VERSION)
        .order_by("-acknowledged_at")
        .values("acknowledged_at")[:1]
    )
    return (
        get_user_model()
        .objects.filter(is_active=True)
        .annotate(
            has_totp=Exists(TOTPDevice.objects.filter(user=OuterRef("pk"), confirmed=True)),
            acknowledged_at=Subquery(latest_ack),
        )
        .prefetch_related("groups")
        .order_by("username")
    )


@console_view()
@require_http_methods(["GET", "HEAD"])
def custodian_list(request: HttpRequest) -> HttpResponse:
    cutoff = timezone.now() - dt.timedelta(days=settings.KMS_ACKNOWLEDGEMENT_VALID_DAYS)
    people, without_role = [], []
    for person in _people():
        roles = {group.name for group in person.groups.all()} & set(Role.values)
        row = {
            "user": person,
            "roles": sorted(roles),
            "privileged": bool(roles & PRIVILEGED_ROLES),
            "custodian": Role.CUSTODIAN in roles,
            "ack_current": bool(person.acknowledged_at and person.acknowledged_at > cutoff),
        }
        (people if roles else without_role).append(row)
    pending = list(
        ApprovalRequest.objects.filter(operation="custodian_change", state__in=ACTIVE_STATES)
        .select_related("requester")
        .order_by("-created_at")
    )
    context = {
        "people": people,
        "without_role": without_role,
        "pending": pending,
        "text_version": responsibilities.VERSION,
        "may_propose": bool(user_roles(request.user) & registry.get("custodian_change").requester_roles),
    }
    return render(request, "lifecycle/custodian_list.html", context)


@console_view()
@require_http_methods(["GET", "HEAD", "POST"])
def custodian_roles(request: HttpRequest, username: str) -> HttpResponse:
    _check_may_request(request, "custodian_change")
    person = get_object_or_404(get_user_model().objects.prefetch_related("groups"), username=username, is_active=True)
    current_roles = sorted({group.name for group in person.groups.all()} & set(Role.values))
    form = RoleChangeForm(request.POST if request.method == "POST" else None, initial={"roles": current_roles})
    if request.method == "POST" and form.is_valid():
        req = _open_request(request, form, operation="custodian_change", target_id=person.get_username())
        if req is not None:
            return _after_open(request, req)
    context = {"person": person, "current_roles": current_roles, "form": form, "is_self": person.pk == request.user.pk}
    return render(request, "lifecycle/custodian_roles.html", context)
