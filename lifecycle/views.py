"""Console pages of the lifecycle: dashboard, keys, policies, custodians, HSMs and jobs.

Views read with plain queries (plus `lifecycle.selectors` and `approvals.selectors`) and change
nothing themselves: every change is a request opened through `approvals.services.open_request`,
which runs the registered action's checks and the dual-control rules. A refusal comes back as a
sentence next to the form field it concerns.

Who sees what: every console role (key_admin, custodian, security_officer, auditor) reads every
page; request forms are for the roles the operation's action names (key_admin for key steps,
security_officer for policies, roles and HSMs; custodians may also suspend or mark compromised).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Exists, OuterRef, Prefetch, Q, Subquery
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import responsibilities
from accounts.models import Acknowledgement
from approvals import registry
from approvals import services as approvals
from approvals.models import ACTIVE_STATES, ApprovalRequest, RequestState
from approvals.selectors import open_requests_of, requests_waiting_for
from approvals.views import may_request_anything, with_approval_count
from audit import services as audit_services
from audit.models import AuditEvent
from kms_console.lib.errors import ApplicationError
from kms_console.lib.roles import PRIVILEGED_ROLES, Role
from kms_console.lib.web import add_service_error, console_view, empty_choice, paginate, user_roles

from .backups.selectors import backups_for_key
from .filtersets import JobFilterSet, KeyFilterSet
from .forms import (
    KEY_OPERATION_FORMS,
    USAGE_CHOICES,
    GenerateKeyForm,
    GrantForm,
    HsmRegisterForm,
    PolicyForm,
    RequestForm,
    RoleChangeForm,
)
from .hsm.base import ALGORITHMS
from .models import DestructionCertificate, Hsm, Job, JobKind, JobStatus, Key, KeyGrant, Policy, PolicyVersion
from .models.jobs import ACTIVE_JOB_STATUSES
from .policies import QUORUM_OPERATIONS, quorum_for
from .selectors import REVIEW, TRANSITION, TimelineEntry, key_timeline
from .services import keys as key_services
from .states import KeyState

DASHBOARD_ROWS = 8
# How many of the latest audit events an auditor's dashboard lists.
RECENT_AUDIT_EVENTS = 10
# Keys whose primary version stops protecting data within this many days show on the dashboard.
NEARING_DAYS = 30
JOB_STATUS_MAX_IDS = 50

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


def _state_chart(counts: dict[str, int]) -> dict[str, Any]:
    """Bars for the keys-by-state chart (an inline SVG sized by attributes: the CSP forbids inline styles)."""
    bar_max = 300
    row_height = 30
    top = max(counts.values(), default=0) or 1
    rows = []
    for index, (state, label) in enumerate(KeyState.choices):
        count = counts.get(state, 0)
        rows.append(
            {
                "state": state,
                "label": label,
                "count": count,
                "width": round(bar_max * count / top) if count else 0,
                "y": index * row_height,
                "text_y": index * row_height + 14,
            }
        )
    return {"rows": rows, "height": len(rows) * row_height, "total": sum(counts.values()), "bar_max": bar_max}


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


# --- Dashboard ------------------------------------------------------------------------------------


def _share_context(user: Any) -> dict[str, Any]:
    """A custodian's escrow shares to take and restores waiting for their share (deadlines apply)."""
    if Role.CUSTODIAN not in user_roles(user):
        return {"my_shares": [], "my_restores": []}
    from .backups import selectors as backup_selectors

    return {
        "my_shares": list(backup_selectors.shares_waiting_for(user)),
        "my_restores": backup_selectors.restores_waiting_for(user),
    }


@console_view()
@require_http_methods(["GET", "HEAD"])
def dashboard(request: HttpRequest) -> HttpResponse:
    """The signed-in user's work: requests waiting for their decision and their own open requests;
    for auditors (who request and approve nothing) the latest audit activity, the chain's state and
    the way to verify it and to the compliance dashboard. Everyone sees the estate below."""
    user = request.user
    now = timezone.now()
    auditor = Role.AUDITOR in user_roles(user)
    waiting: list[ApprovalRequest] = []
    mine: list[ApprovalRequest] = []
    waiting_total = mine_total = 0
    audit_context: dict[str, Any] = {}
    if auditor:
        request._kms_waiting_count = 0  # auditors decide nothing: the nav badge needs no query
        audit_context = _auditor_panel(user)
    else:
        waiting_qs = with_approval_count(requests_waiting_for(user))
        waiting = list(waiting_qs[:DASHBOARD_ROWS])
        waiting_total = len(waiting) if len(waiting) < DASHBOARD_ROWS else waiting_qs.count()
        request._kms_waiting_count = waiting_total  # the nav badge reuses it
        mine_qs = with_approval_count(open_requests_of(user))
        mine = list(mine_qs[:DASHBOARD_ROWS])
        mine_total = len(mine) if len(mine) < DASHBOARD_ROWS else mine_qs.count()
    # order_by() drops Key's default ordering, which would otherwise join the GROUP BY.
    counts = dict(Key.objects.order_by().values_list("state").annotate(n=Count("pk")))
    nearing = list(
        Key.objects.filter(
            state=KeyState.ACTIVE,
            primary_version__originator_until__lte=now + dt.timedelta(days=NEARING_DAYS),
        )
        .select_related("primary_version", "policy")
        .order_by("primary_version__originator_until")[:DASHBOARD_ROWS]
    )
    failed_qs = Job.objects.filter(status=JobStatus.FAILED).select_related("key", "request").order_by("-finished_at")
    failed_jobs = list(failed_qs[:DASHBOARD_ROWS])
    failed_total = len(failed_jobs) if len(failed_jobs) < DASHBOARD_ROWS else failed_qs.count()
    context = {
        "waiting": waiting,
        "waiting_total": waiting_total,
        "mine": mine,
        "mine_total": mine_total,
        "chart": _state_chart(counts),
        "active_keys": counts.get(KeyState.ACTIVE, 0),
        "nearing": nearing,
        "nearing_days": NEARING_DAYS,
        "failed_jobs": failed_jobs,
        "failed_total": failed_total,
        "now": now,
        "may_generate": bool(user_roles(user) & registry.get("generate").requester_roles),
        "may_request": may_request_anything(user_roles(user)),
        "auditor": auditor,
        **_share_context(user),
        **audit_context,
    }
    return render(request, "lifecycle/dashboard.html", context)


def _auditor_panel(user: Any) -> dict[str, Any]:
    """The auditor's part of the dashboard: the latest events (reads of the trail left out, they
    would crowd out everything else), the chain head and the last signed checkpoint.

    Showing events is reading the trail, so it is recorded (`audit.read`, view "dashboard") after
    the events were read; the list therefore never shows its own read.
    """
    recent = list(AuditEvent.objects.exclude(action="audit.read").order_by("-seq")[:RECENT_AUDIT_EVENTS])
    head_seq, head_hash = audit_services.chain_head()
    checkpoint = audit_services.latest_checkpoint()
    audit_services.record_read(actor=user, what="dashboard", shown=len(recent))
    return {
        "recent_events": recent,
        "head_seq": head_seq,
        "head_hash": head_hash,
        "checkpoint": checkpoint,
        "unsigned_events": head_seq - checkpoint.seq if checkpoint is not None else head_seq,
    }


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


# --- Jobs -----------------------------------------------------------------------------------------


@console_view()
@require_http_methods(["GET", "HEAD"])
def job_list(request: HttpRequest) -> HttpResponse:
    queryset = Job.objects.select_related("key", "request").order_by("-created_at")
    filterset = JobFilterSet(request.GET or None, queryset=queryset)
    form = filterset.form
    empty_choice(form.fields["status"], "Any status", JobStatus.choices)
    empty_choice(form.fields["kind"], "Any kind", JobKind.choices)
    form.fields["key"].widget = forms.HiddenInput()
    page = paginate(request, filterset.qs)
    context = {
        "filter_form": form,
        "page_obj": page,
        "filtered": any(value for name, value in request.GET.items() if name != "page"),
        "jobs_active": any(job.status in ACTIVE_JOB_STATUSES for job in page),
    }
    return render(request, "lifecycle/job_list.html", context)


@console_view()
@require_http_methods(["GET", "HEAD"])
def job_detail(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    job = get_object_or_404(Job.objects.select_related("key", "version", "hsm", "request"), pk=job_id)
    return render(request, "lifecycle/job_detail.html", {"job": job, "active": job.status in ACTIVE_JOB_STATUSES})


@console_view()
@require_http_methods(["GET"])
def job_status(request: HttpRequest) -> JsonResponse:
    """Statuses of up to 50 jobs (`?id=…&id=…`) for the page poll in static/js/console.js."""
    ids = []
    for raw in request.GET.getlist("id")[:JOB_STATUS_MAX_IDS]:
        try:
            ids.append(uuid.UUID(raw))
        except ValueError:
            continue
    statuses = {str(pk): status for pk, status in Job.objects.filter(pk__in=ids).values_list("pk", "status")}
    return JsonResponse({"jobs": statuses})
