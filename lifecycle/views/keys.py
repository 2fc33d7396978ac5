"""Key pages: the list, a key with its versions, timeline, jobs and backups, and the request forms
for a new key and for each step on a key."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from django import forms
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from approvals import registry
from approvals.models import ACTIVE_STATES, ApprovalRequest, RequestState
from kms_console.lib.errors import ApplicationError
from kms_console.lib.web import console_view, empty_choice, paginate, user_roles

from ..backups.selectors import backups_for_key
from ..filtersets import KeyFilterSet
from ..forms import (
    KEY_OPERATION_FORMS,
    USAGE_CHOICES,
    GenerateKeyForm,
    GrantForm,
)
from ..hsm.base import ALGORITHMS
from ..models import DestructionCertificate, Key, KeyGrant, Policy, PolicyVersion
from ..models.jobs import ACTIVE_JOB_STATUSES
from ..policies import quorum_for
from ..selectors import REVIEW, TRANSITION, TimelineEntry, key_timeline
from ..services import keys as key_services
from ..states import KeyState
from .common import _after_open, _check_may_request, _open_request

# What each key operation does, in the words an approver or requester needs before asking for it.
OPERATION_HELP: dict[str, str] = {
    "activate": "The key may encrypt, sign or MAC from then on, for the originator-usage period of its policy.",
    "rotate": "A new version is generated inside the HSM and becomes primary; the current version can still "
    "decrypt and verify until its recipient-usage period ends.",
    "suspend": "Nothing may use the key until it is resumed. Use it when you suspect a problem.",
    "resume": "The key becomes active again and may be used as before its suspension.",
    "deactivate": "The key can no longer encrypt, sign or MAC; it can still decrypt and verify what it protected.",
    "compromise": "Every use stops for good and a revocation notice is recorded; only destruction can follow.",
    "schedule_destruction": "After the policy's waiting period a worker destroys every HSM object and backup of the "
    "key and issues a certificate of destruction. Until then nothing may use it and the schedule can be cancelled.",
    "cancel_destruction": "The key returns to normal use in its current state.",
    "process_exception": "The compromised key may decrypt and verify (never encrypt or sign) until the date you "
    "give, to recover data it protected.",
    "grant": "The service account may use the key for the operations you tick (or loses its use if none).",
}
# States in which a service account could ever use a key; a grant makes no sense after them.
GRANTABLE_STATES = frozenset({KeyState.PRE_ACTIVATION, KeyState.ACTIVE, KeyState.SUSPENDED, KeyState.DEACTIVATED})
# Steps that take effect at once and are reviewed by custodians afterwards.
IMMEDIATE_OPERATIONS = frozenset({"suspend", "compromise"})


def _timeline_rows(entries: list[Any]) -> list[dict[str, Any]]:
    """Timeline entries, with each request's approvals shown once (at its first transition)."""
    rows = []
    previous = None
    for entry in entries:
        request_id = entry.request.pk if entry.request is not None else None
        rows.append({"entry": entry, "show_decisions": request_id is not None and request_id != previous})
        previous = request_id
    return rows


# What a version of a key of each usage still does once it no longer protects new data.
PROCESS_VERBS: dict[str, str] = {
    "encrypt_decrypt": "decrypts",
    "sign_verify": "verifies",
    "mac": "verifies MACs",
    "wrap_unwrap": "unwraps keys",
}


def _key_block(key: Key) -> str:
    """Why nothing may use any version of the key now, even an active one ("" when nothing blocks it)."""
    if key.state == KeyState.DESTROYED:
        return ""  # its versions say "destroyed" themselves
    if key.destroy_after is not None:
        return "destruction scheduled"
    if key.state == KeyState.SUSPENDED:
        return "key suspended"
    return ""


def _period_cell(until: dt.datetime | None, now: dt.datetime, *, blocked: str) -> dict[str, Any]:
    """A period's end; greyed out while the key blocks every use (the state column says why)."""
    if until is None:
        return {"when": None, "text": "—", "note": "", "muted": True, "paused": False}
    if until <= now:
        return {"when": until, "text": "", "note": "period ended", "muted": True, "paused": False}
    return {
        "when": until,
        "text": "",
        "note": "paused" if blocked else "",
        "muted": bool(blocked),
        "paused": bool(blocked),
    }


def version_rows(key: Key, versions: list[Any], now: dt.datetime) -> list[dict[str, Any]]:
    """What each version of the key may do now, for the versions table (SPEC §4 usage rules).

    A version's own state can say "active" while the key is suspended or scheduled for destruction:
    `block` then says why nothing may use it. "Protects until" shows the end of the originator
    period only for the version that still protects (the active primary); a deactivated,
    compromised or destroyed version says it no longer does, with "processes until" where it
    still decrypts or verifies.
    """
    process_verb = PROCESS_VERBS.get(key.usage, "processes data")
    block = _key_block(key)
    exception_until = key.process_exception_until if key.state == KeyState.COMPROMISED else None
    rows = []
    for version in versions:
        state = version.state
        live = state in (KeyState.PRE_ACTIVATION, KeyState.ACTIVE, KeyState.DEACTIVATED)
        ended_at = {
            KeyState.DEACTIVATED: version.deactivated_at,
            KeyState.COMPROMISED: version.compromised_at,
            KeyState.DESTROYED: version.destroyed_at,
        }.get(state)
        if state == KeyState.ACTIVE and version.pk == key.primary_version_id:
            protects = _period_cell(version.originator_until, now, blocked=block)
        elif state == KeyState.ACTIVE:
            protects = {"when": None, "text": "No", "note": "only the primary version", "muted": True}
        elif state == KeyState.PRE_ACTIVATION:
            protects = {"when": None, "text": "Not yet", "note": "pre-activation", "muted": True}
        else:
            protects = {"when": None, "text": "No longer", "note": state.replace("_", " "), "muted": True}
            protects["since"] = ended_at
        if state in (KeyState.ACTIVE, KeyState.DEACTIVATED):
            processes = _period_cell(version.recipient_until, now, blocked=block)
            if state == KeyState.DEACTIVATED and not processes["muted"]:
                processes["note"] = f"still {process_verb}"
        elif state == KeyState.COMPROMISED and exception_until and exception_until > now:
            processes = {"when": exception_until, "text": "", "note": "under an approved exception", "muted": False}
        elif state == KeyState.PRE_ACTIVATION:
            processes = {"when": None, "text": "Not yet", "note": "", "muted": True}
        else:
            processes = {"when": None, "text": "No longer", "note": "", "muted": True}
        rows.append(
            {
                "version": version,
                "block": block if live else "",
                "protects": protects,
                "processes": processes,
            }
        )
    return rows


def _immediate_review(timeline: list[TimelineEntry], open_requests: list[ApprovalRequest]) -> dict[str, Any]:
    """The review of the immediate suspend or compromise that put the key in its current state:
    `pending_review` (the open review request) or `review_outcome` (the decided review's entry)."""
    last_change = next((e for e in reversed(timeline) if e.kind == TRANSITION and e.version is None), None)
    immediate = last_change.request if last_change is not None else None
    if immediate is None or immediate.operation not in IMMEDIATE_OPERATIONS:
        return {"pending_review": None, "review_outcome": None}
    pending = next((req for req in open_requests if req.review_of_id == immediate.pk), None)
    outcome = next(
        (
            e
            for e in reversed(timeline)
            if e.kind == REVIEW and e.reviewed is not None and e.reviewed.pk == immediate.pk
        ),
        None,
    )
    return {"pending_review": pending, "review_outcome": outcome}


def _available_operations(key: Key, roles: set[str], pending_ops: set[str]) -> list[dict[str, Any]]:
    """The key operations this user may ask for now: the state machine, the roles, and open requests agree."""
    available = []
    for operation in KEY_OPERATION_FORMS:
        try:
            action = registry.get(operation)
        except ApplicationError:
            continue
        if not roles & action.requester_roles:
            continue
        if operation == "process_exception" and key.state != KeyState.COMPROMISED:
            continue
        if operation == "grant" and key.state not in GRANTABLE_STATES:
            continue
        try:
            key_services.check_operation_allowed(key, operation)
        except ApplicationError:
            continue
        available.append(
            {
                "operation": operation,
                "title": action.title,
                "pending": operation in pending_ops,
                "danger": operation in {"compromise", "schedule_destruction", "suspend"},
            }
        )
    return available


# --- Keys -----------------------------------------------------------------------------------------


def _dress_key_filters(form: forms.Form) -> None:
    """Readable labels and choices for the shared KeyFilterSet's form (presentation only)."""
    form.fields["q"].label = "Search"
    form.fields["q"].widget.attrs.update(placeholder="Name or description", type="search")
    empty_choice(form.fields["state"], "Any state", KeyState.choices)
    empty_choice(form.fields["algorithm"], "Any algorithm", [(name, name) for name in sorted(ALGORITHMS)])
    form.fields["usage"].widget = forms.Select(choices=[("", "Any usage"), *USAGE_CHOICES])
    policies = list(Policy.objects.order_by("name").values_list("name", flat=True))
    form.fields["policy"].label = "Policy"
    form.fields["policy"].widget = forms.Select(choices=[("", "Any policy"), *((p, p) for p in policies)])
    form.fields["tag"].label = "Tag"
    form.fields["tag"].widget.attrs.update(placeholder="e.g. payments")
    form.order_fields(["q", "state", "algorithm", "usage", "policy", "tag"])


@console_view()
@require_http_methods(["GET", "HEAD"])
def key_list(request: HttpRequest) -> HttpResponse:
    queryset = Key.objects.select_related("policy", "primary_version", "hsm").order_by("name")
    filterset = KeyFilterSet(request.GET or None, queryset=queryset)
    _dress_key_filters(filterset.form)
    page = paginate(request, filterset.qs)
    filtered = any(value for name, value in request.GET.items() if name != "page")
    context = {
        "filter_form": filterset.form,
        "page_obj": page,
        "filtered": filtered,
        "may_generate": bool(user_roles(request.user) & registry.get("generate").requester_roles),
    }
    return render(request, "lifecycle/key_list.html", context)


@console_view()
@require_http_methods(["GET", "HEAD"])
def key_detail(request: HttpRequest, key_id: uuid.UUID) -> HttpResponse:
    key = get_object_or_404(
        Key.objects.select_related(
            "policy", "hsm", "owner", "primary_version", "created_by_request", "destruction_certificate"
        ),
        pk=key_id,
    )
    versions = list(key.versions.select_related("hsm").order_by("-number"))
    now = timezone.now()
    # The key's own requests and the mandatory reviews of its immediate suspensions and compromises
    # (a review targets the request it reviews, not the key).
    open_requests = list(
        ApprovalRequest.objects.filter(
            Q(target_type="key", target_id=str(key.pk))
            | Q(review_of__target_type="key", review_of__target_id=str(key.pk)),
            state__in=[*ACTIVE_STATES, RequestState.FAILED],
        )
        .select_related("requester", "review_of")
        .order_by("-created_at")
    )
    pending_ops = {req.operation for req in open_requests if req.state == RequestState.PENDING}
    timeline = key_timeline(key)
    jobs = list(key.jobs.select_related("request", "version").order_by("-created_at")[:20])
    try:
        certificate = key.destruction_certificate  # joined above: no query
    except DestructionCertificate.DoesNotExist:
        certificate = None
    context = {
        "key": key,
        "versions": versions,
        "version_rows": version_rows(key, versions, now),
        "timeline": _timeline_rows(timeline),
        **_immediate_review(timeline, open_requests),
        "jobs": jobs,
        "jobs_active": any(job.status in ACTIVE_JOB_STATUSES for job in jobs),
        "open_requests": open_requests,
        "actions": _available_operations(key, user_roles(request.user), pending_ops),
        "grants": list(KeyGrant.objects.filter(key=key, revoked_at__isnull=True).select_related("grantee")),
        # One query for every backup of every version (versions and KEKs joined), newest first.
        "backups": list(backups_for_key(key)),
        "certificate": certificate,
        "certificate_body": json.dumps(certificate.body, indent=2, sort_keys=True) if certificate else "",
        "now": now,
    }
    return render(request, "lifecycle/key_detail.html", context)


@console_view()
@require_http_methods(["GET", "HEAD", "POST"])
def key_generate(request: HttpRequest) -> HttpResponse:
    action = _check_may_request(request, "generate")
    form = GenerateKeyForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        req = _open_request(request, form, operation="generate")
        if req is not None:
            return _after_open(request, req)
    quorums = [
        (version.policy.name, quorum_for(version, "generate"))
        for version in PolicyVersion.objects.filter(is_current=True).select_related("policy").order_by("policy__name")
    ]
    return render(request, "lifecycle/key_generate.html", {"form": form, "action": action, "quorums": quorums})


@console_view()
@require_http_methods(["GET", "HEAD", "POST"])
def key_operation(request: HttpRequest, key_id: uuid.UUID, operation: str) -> HttpResponse:
    form_class = KEY_OPERATION_FORMS.get(operation)
    if form_class is None:
        raise Http404("No such key operation.")
    action = _check_may_request(request, operation)
    key = get_object_or_404(Key.objects.select_related("policy", "primary_version"), pk=key_id)
    kwargs: dict[str, Any] = {"key": key} if form_class is GrantForm else {}
    form = form_class(request.POST if request.method == "POST" else None, **kwargs)
    problem = None
    try:
        key_services.check_operation_allowed(key, operation)
        if operation == "process_exception" and key.state != KeyState.COMPROMISED:
            problem = "A processing exception applies to compromised keys only."
    except ApplicationError as exc:
        problem = exc.message
    if request.method == "POST" and form.is_valid():
        req = _open_request(request, form, operation=operation, target_id=str(key.pk))
        if req is not None:
            return _after_open(request, req, key=key)
    context = {
        "key": key,
        "form": form,
        "operation": operation,
        "action": action,
        "help": OPERATION_HELP.get(operation, ""),
        "quorum": quorum_for(key.policy.current, operation),
        "problem": problem,
        "danger": operation in {"compromise", "schedule_destruction", "suspend"},
    }
    return render(request, "lifecycle/key_operation.html", context)
