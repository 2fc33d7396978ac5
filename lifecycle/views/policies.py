"""Policy pages: the list, a policy with its versions, and proposing a change (a request)."""

from __future__ import annotations

from django.db.models import Count, Prefetch, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_http_methods

from approvals import registry
from approvals.models import ACTIVE_STATES, ApprovalRequest
from kms_console.lib.web import console_view, user_roles

from ..forms import (
    PolicyForm,
)
from ..models import Policy, PolicyVersion
from ..policies import QUORUM_OPERATIONS
from ..states import KeyState
from .common import _after_open, _check_may_request, _open_request

# --- Policies -------------------------------------------------------------------------------------


def _current_versions() -> Prefetch:
    return Prefetch("versions", queryset=PolicyVersion.objects.filter(is_current=True), to_attr="current_versions")


@console_view()
@require_http_methods(["GET", "HEAD"])
def policy_list(request: HttpRequest) -> HttpResponse:
    policies = list(
        Policy.objects.annotate(key_count=Count("keys", filter=~Q(keys__state=KeyState.DESTROYED)))
        .prefetch_related(_current_versions())
        .order_by("name")
    )
    rows = [{"policy": p, "current": p.current_versions[0] if p.current_versions else None} for p in policies]
    pending = list(
        ApprovalRequest.objects.filter(operation="policy_change", state__in=ACTIVE_STATES)
        .select_related("requester")
        .order_by("-created_at")
    )
    context = {
        "rows": rows,
        "pending": pending,
        "may_propose": bool(user_roles(request.user) & registry.get("policy_change").requester_roles),
    }
    return render(request, "lifecycle/policy_list.html", context)


@console_view()
@require_http_methods(["GET", "HEAD"])
def policy_detail(request: HttpRequest, name: str) -> HttpResponse:
    policy = get_object_or_404(Policy, name=name)
    versions = list(policy.versions.select_related("created_by", "request").order_by("-number"))
    current = next((v for v in versions if v.is_current), None)
    quorum = [
        {"operation": op, **((current.quorum or {}).get(op) or {})} for op in QUORUM_OPERATIONS if current is not None
    ]
    pending = list(
        ApprovalRequest.objects.filter(
            operation="policy_change", target_type="policy", target_id=policy.name, state__in=ACTIVE_STATES
        ).select_related("requester")
    )
    context = {
        "policy": policy,
        "current": current,
        "versions": versions,
        "quorum": quorum,
        "pending": pending,
        "key_count": policy.keys.exclude(state=KeyState.DESTROYED).count(),
        "may_propose": bool(user_roles(request.user) & registry.get("policy_change").requester_roles),
    }
    return render(request, "lifecycle/policy_detail.html", context)


@console_view()
@require_http_methods(["GET", "HEAD", "POST"])
def policy_propose(request: HttpRequest, name: str | None = None) -> HttpResponse:
    _check_may_request(request, "policy_change")
    policy = get_object_or_404(Policy, name=name) if name is not None else None
    current = policy.current if policy is not None else None
    form = PolicyForm(request.POST if request.method == "POST" else None, current=current)
    if request.method == "POST" and form.is_valid():
        req = _open_request(request, form, operation="policy_change", target_id=policy.name if policy else "")
        if req is not None:
            return _after_open(request, req)
    return render(request, "lifecycle/policy_propose.html", {"form": form, "policy": policy, "current": current})
