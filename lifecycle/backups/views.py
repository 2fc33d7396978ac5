"""Console pages of backups, escrow and restores. Each view shows data or calls one service."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from accounts.services import roles_of
from approvals import services as approvals
from kms_console.lib.errors import ApplicationError
from kms_console.lib.roles import Role
from kms_console.lib.web import add_service_error, console_view, paginate

from ..models import Backup, CeremonyState, EscrowCeremony, EscrowShare, Hsm, Key, Restore
from . import selectors
from .distribution import import_key_info
from .escrow import current_ceremony, custody_gaps, is_overdue, retrieve_share
from .forms import (
    BackupRequestForm,
    EscrowForm,
    ExportRequestForm,
    RestoreRequestForm,
    ShareEntryForm,
    ShareRetrieveForm,
)
from .restore import enter_share

KEY_ADMIN = Role.KEY_ADMIN
CEREMONY_REQUESTERS = (Role.KEY_ADMIN, Role.SECURITY_OFFICER)


def _request_page(req: Any) -> str:
    return reverse("approvals:request_detail", args=[req.pk])


@console_view()
def index(request: HttpRequest) -> HttpResponse:
    """The backup KEK and its escrow, custody gaps, shares and restores waiting for the user, backups."""
    ceremony = current_ceremony()
    if ceremony is not None:
        ceremony = (
            EscrowCeremony.objects.select_related("kek_version__key")
            .prefetch_related(Prefetch("shares", queryset=EscrowShare.objects.select_related("holder")))
            .get(pk=ceremony.pk)
        )
    context = {
        "ceremony": ceremony,
        "handing_off": selectors.newer_ceremonies(ceremony) if ceremony is not None else [],
        "gaps": custody_gaps(),
        "my_shares": list(selectors.shares_waiting_for(request.user)),
        "restores": list(selectors.open_restores()),
        "page": paginate(request, selectors.backup_list()),
        "can_request": bool(set(roles_of(request.user)) & {KEY_ADMIN}),
        "can_hold_ceremony": bool(set(roles_of(request.user)) & set(CEREMONY_REQUESTERS)),
    }
    return render(request, "backups/index.html", context)


@console_view(*CEREMONY_REQUESTERS)
@require_http_methods(["GET", "POST"])
def escrow_new(request: HttpRequest) -> HttpResponse:
    form = EscrowForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            req = approvals.open_request(
                operation="escrow",
                requester=request.user,
                justification=data["justification"],
                target_id=str(data["kek"].pk),
                parameters={
                    "custodians": [u.get_username() for u in data["custodians"]],
                    "threshold": data["threshold"],
                },
            )
        except ApplicationError as exc:
            add_service_error(form, exc, fields={"target_id": "kek"})
        else:
            messages.success(request, "The escrow ceremony waits for approval.")
            return redirect(_request_page(req))
    return render(request, "backups/escrow_new.html", {"form": form})


def _ceremony(ceremony_id: uuid.UUID) -> EscrowCeremony:
    ceremony = (
        EscrowCeremony.objects.select_related("kek_version__key", "request")
        .prefetch_related(Prefetch("shares", queryset=EscrowShare.objects.select_related("holder")))
        .filter(pk=ceremony_id)
        .first()
    )
    if ceremony is None:
        raise Http404("No such escrow ceremony.")
    return ceremony


@console_view()
def ceremony_detail(request: HttpRequest, ceremony_id: uuid.UUID) -> HttpResponse:
    return render(request, "backups/ceremony.html", {"ceremony": _ceremony(ceremony_id)})


def _share_unavailable(share: EscrowShare) -> str:
    """Why this share can no longer be taken ("" while it can): said at once, without asking for a code."""
    ceremony = share.ceremony
    if share.retrieved_at is not None:
        return (
            f"You took this share already, on {share.retrieved_at:%Y-%m-%d %H:%M} UTC. It is handed out once; "
            "if it is lost, ask for a new escrow ceremony."
        )
    if is_overdue(ceremony, timezone.now()):
        return (
            f"The deadline to take this share passed on {ceremony.retrieve_by:%Y-%m-%d %H:%M} UTC: the shares not "
            "taken are wiped and the ceremony fails. Ask for a new escrow ceremony."
        )
    if ceremony.state != CeremonyState.DISTRIBUTING or not share.sealed:
        return f"The ceremony is {ceremony.get_state_display().lower()}; this share is no longer handed out."
    return ""


@never_cache
@console_view(Role.CUSTODIAN)
@require_http_methods(["GET", "POST"])
def share_retrieve(request: HttpRequest, ceremony_id: uuid.UUID, index: int) -> HttpResponse:
    """A holder takes their share: once, after a fresh one-time code; shown or downloaded, never stored.

    Anyone but the share's holder is refused at once (403), before a code is asked; a share that can
    no longer be taken says why, without a form.
    """
    share = (
        EscrowShare.objects.select_related("ceremony__kek_version__key")
        .filter(ceremony_id=ceremony_id, index=index)
        .first()
    )
    if share is None:
        raise Http404("No such share.")
    if share.holder_id != request.user.pk:
        raise PermissionDenied("This share is held by another custodian; only its holder can take it.")
    unavailable = _share_unavailable(share)
    if unavailable:
        return render(
            request, "backups/share_retrieve.html", {"share": share, "form": None, "unavailable": unavailable}
        )
    form = ShareRetrieveForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            text = retrieve_share(share_id=share.pk, user=request.user, otp=form.cleaned_data["otp"])
        except ApplicationError as exc:
            add_service_error(form, exc, default_field="otp" if exc.code == "otp_invalid" else None)
        else:
            if form.cleaned_data["delivery"] == "download":
                response = HttpResponse(text + "\n", content_type="text/plain; charset=utf-8")
                response["Content-Disposition"] = f'attachment; filename="kms-share-{str(ceremony_id)[:8]}-{index}.txt"'
            else:
                response = render(request, "backups/share_shown.html", {"share": share, "text": text})
            response["Cache-Control"] = "no-store"
            return response
    return render(request, "backups/share_retrieve.html", {"share": share, "form": form, "unavailable": ""})


def _key(key_id: uuid.UUID) -> Key:
    key = Key.objects.select_related("policy", "primary_version").filter(pk=key_id).first()
    if key is None:
        raise Http404("No such key.")
    return key


def _open_for_key(
    request: HttpRequest, key: Key, operation: str, form: Any, parameters: dict[str, Any], template: str, extra: dict
) -> HttpResponse:
    try:
        req = approvals.open_request(
            operation=operation,
            requester=request.user,
            justification=form.cleaned_data["justification"],
            target_id=str(key.pk),
            parameters=parameters,
        )
    except ApplicationError as exc:
        add_service_error(form, exc)
        return render(request, template, {"key": key, "form": form, **extra})
    messages.success(request, "The request waits for approval.")
    return redirect(_request_page(req))


@console_view(KEY_ADMIN)
@require_http_methods(["GET", "POST"])
def backup_new(request: HttpRequest, key_id: uuid.UUID) -> HttpResponse:
    key = _key(key_id)
    form = BackupRequestForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        parameters = {"version": form.cleaned_data["version"]} if form.cleaned_data["version"] else {}
        return _open_for_key(request, key, "backup", form, parameters, "backups/backup_new.html", {})
    return render(request, "backups/backup_new.html", {"key": key, "form": form})


@console_view(KEY_ADMIN)
@require_http_methods(["GET", "POST"])
def export_new(request: HttpRequest, key_id: uuid.UUID) -> HttpResponse:
    key = _key(key_id)
    form = ExportRequestForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        parameters = {"recipient": data["recipient"], "recipient_public_key": data["recipient_public_key"]}
        if data["version"]:
            parameters["version"] = data["version"]
        return _open_for_key(request, key, "export", form, parameters, "backups/export_new.html", {})
    return render(request, "backups/export_new.html", {"key": key, "form": form})


@console_view(KEY_ADMIN)
@require_http_methods(["GET", "POST"])
def restore_new(request: HttpRequest, backup_id: uuid.UUID) -> HttpResponse:
    backup = Backup.objects.select_related("version__key", "version__hsm").filter(pk=backup_id).first()
    if backup is None:
        raise Http404("No such backup.")
    key = backup.version.key
    form = RestoreRequestForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        hsm: Hsm | None = form.cleaned_data["hsm"]
        parameters = {"backup": str(backup.pk), **({"hsm": hsm.name} if hsm else {})}
        return _open_for_key(request, key, "restore", form, parameters, "backups/restore_new.html", {"backup": backup})
    return render(request, "backups/restore_new.html", {"key": key, "backup": backup, "form": form})


@never_cache
@console_view()
@require_http_methods(["GET", "POST"])
def restore_detail(request: HttpRequest, restore_id: uuid.UUID) -> HttpResponse:
    """The restore's progress; custodians enter their share here (POST, custodians only)."""
    restore = (
        Restore.objects.select_related("backup__version__key", "target_hsm", "ceremony", "request")
        .prefetch_related("entered_shares__share", "entered_shares__custodian")
        .filter(pk=restore_id)
        .first()
    )
    if restore is None:
        raise Http404("No such restore.")
    is_custodian = Role.CUSTODIAN in roles_of(request.user)
    form = ShareEntryForm(request.POST or None)
    if request.method == "POST":
        if not is_custodian:
            raise PermissionDenied("Only custodians enter shares.")
        if form.is_valid():
            try:
                enter_share(
                    restore_id=restore.pk,
                    user=request.user,
                    share_text=form.cleaned_data["share"],
                    otp=form.cleaned_data["otp"],
                )
            except ApplicationError as exc:
                add_service_error(form, exc, default_field="otp" if exc.code == "otp_invalid" else "share")
            else:
                messages.success(request, "Your share was accepted.")
                return redirect("backups:restore", restore_id=restore.pk)
    return render(
        request,
        "backups/restore.html",
        {"restore": restore, "form": form, "can_enter": is_custodian, "entered": list(restore.entered_shares.all())},
    )


@console_view()
def import_key(request: HttpRequest) -> HttpResponse:
    hsm = Hsm.objects.filter(is_default=True).first()
    if hsm is None:
        raise Http404("No HSM is registered.")
    try:
        info = import_key_info(hsm=hsm)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        info = None
    return render(request, "backups/import_key.html", {"info": info})
