"""The dashboard: the signed-in user's work, the estate at a glance, and the auditor's panel."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from approvals import registry
from approvals.models import ApprovalRequest
from approvals.selectors import open_requests_of, requests_waiting_for
from approvals.views import may_request_anything, with_approval_count
from audit import services as audit_services
from audit.models import AuditEvent
from kms_console.lib.roles import Role
from kms_console.lib.web import console_view, user_roles

from ..backups import selectors as backup_selectors
from ..models import Job, JobStatus, Key
from ..states import KeyState

DASHBOARD_ROWS = 8
# How many of the latest audit events an auditor's dashboard lists.
RECENT_AUDIT_EVENTS = 10
# Keys whose primary version stops protecting data within this many days show on the dashboard.
NEARING_DAYS = 30


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


# --- Dashboard ------------------------------------------------------------------------------------


def _share_context(user: Any) -> dict[str, Any]:
    """A custodian's escrow shares to take and restores waiting for their share (deadlines apply)."""
    if Role.CUSTODIAN not in user_roles(user):
        return {"my_shares": [], "my_restores": []}
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
