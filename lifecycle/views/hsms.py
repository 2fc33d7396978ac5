"""HSM pages: health and inventory, registration and retirement (both requests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.contrib import messages
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from approvals import registry
from approvals import services as approvals
from approvals.models import ACTIVE_STATES, ApprovalRequest
from kms_console.lib.errors import ApplicationError
from kms_console.lib.web import console_view, user_roles

from ..forms import (
    HsmRegisterForm,
    RequestForm,
)
from ..models import Hsm
from ..states import KeyState
from .common import _after_open, _check_may_request, _open_request

# --- HSMs -----------------------------------------------------------------------------------------


@console_view()
@require_http_methods(["GET", "HEAD"])
def hsm_list(request: HttpRequest) -> HttpResponse:
    hsms = list(Hsm.objects.annotate(key_count=Count("keys", filter=~Q(keys__state=KeyState.DESTROYED))))
    rows = []
    for hsm in hsms:
        # Asks the token itself: the page shows what the HSM says now, not what the database believes.
        health = hsm.health() if hsm.retired_at is None else None
        rows.append({"hsm": hsm, "health": health, "pin_sources": pin_sources(hsm)})
    pending = list(
        ApprovalRequest.objects.filter(operation="hsm_change", state__in=ACTIVE_STATES)
        .select_related("requester")
        .order_by("-created_at")
    )
    context = {
        "rows": rows,
        "pending": pending,
        "may_propose": bool(user_roles(request.user) & registry.get("hsm_change").requester_roles),
    }
    return render(request, "lifecycle/hsm_list.html", context)


def pin_sources(hsm: Hsm) -> list[dict[str, Any]]:
    """Where the PIN of the HSM's token comes from, in the order the driver tries them
    (lifecycle.hsm.pkcs11: the variable when it is set and not empty, else the file), and which one
    this process would use now. Only presence is checked: the PIN itself is never read here."""
    sources: list[dict[str, Any]] = []
    if hsm.pin_env:
        is_set = bool(os.environ.get(hsm.pin_env))
        sources.append(
            {"kind": "variable", "name": f"${hsm.pin_env}", "status": "set" if is_set else "not set", "used": is_set}
        )
    if hsm.pin_file:
        present = Path(hsm.pin_file).is_file()
        sources.append(
            {
                "kind": "file",
                "name": hsm.pin_file,
                "status": "present" if present else "missing",
                "used": present and not any(source["used"] for source in sources),
            }
        )
    return sources


@console_view()
@require_http_methods(["GET", "HEAD", "POST"])
def hsm_register(request: HttpRequest) -> HttpResponse:
    _check_may_request(request, "hsm_change")
    form = HsmRegisterForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        req = _open_request(request, form, operation="hsm_change", target_id=form.cleaned_data["name"].strip())
        if req is not None:
            return _after_open(request, req)
    return render(request, "lifecycle/hsm_register.html", {"form": form})


@console_view()
@require_POST
def hsm_retire(request: HttpRequest, name: str) -> HttpResponse:
    _check_may_request(request, "hsm_change")
    hsm = get_object_or_404(Hsm, name=name, retired_at__isnull=True)
    form = RequestForm(request.POST)
    if form.is_valid():
        try:
            req = approvals.open_request(
                operation="hsm_change",
                requester=request.user,
                justification=form.cleaned_data["justification"],
                target_id=hsm.name,
                parameters={"action": "retire", "name": hsm.name},
            )
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            return _after_open(request, req)
    else:
        messages.error(request, "Give a justification to retire an HSM: say why it is no longer needed.")
    return redirect("lifecycle:hsm_list")
