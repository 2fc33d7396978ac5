"""Console pages of compliance: the dashboard per framework, control and check drill-downs, downloads.

Views only read (through `assess`) and call services for the two writes: recording an export and an
audit review. Every console role sees the summaries; auditors and security officers see the rest
(`compliance.access`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from kms_console.lib.errors import ApplicationError
from kms_console.lib.web import console_view, safe_next

from . import access, charts, selectors, services
from .assessment import assess, checks_for_control, checks_for_framework, framework_controls
from .checks import BY_ID, CHECKS
from .checks.base import STATUS_LABELS
from .forms import AuditReviewForm, ControlFilterForm
from .mapping import CHECK_CONTROLS
from .models import Control, Framework
from .reports import FORMATS


def _framework_or_404(slug: str) -> Framework:
    framework = Framework.objects.filter(slug=slug).first()
    if framework is None:
        raise Http404("No such framework.")
    return framework


def _require_details(request: HttpRequest) -> None:
    if not access.can_view_details(request.user):
        raise PermissionDenied("Control details, evidence and reports are for auditors and security officers.")


def _review_card(request: HttpRequest, assessment: Any) -> dict[str, Any] | None:
    outcome = assessment.outcome("audit_review")
    if outcome is None:
        return None
    return {"outcome": outcome, "form": AuditReviewForm(), "may_record": access.can_record_review(request.user)}


@require_GET
@console_view()
def index(request: HttpRequest) -> HttpResponse:
    details = access.can_view_details(request.user)
    frameworks = list(Framework.objects.order_by("position"))
    controls = list(Control.objects.select_related("framework").order_by("framework__position", "position"))
    assessment = assess()
    summaries = []
    for framework in frameworks:
        result = assessment.framework(framework, [c for c in controls if c.framework_id == framework.pk])
        summaries.append({"result": result, "bar": charts.summary_bar(result.counts)})
    context: dict[str, Any] = {
        "summaries": summaries,
        "details": details,
        "assessment": assessment,
        "statuses": [(s, STATUS_LABELS[s]) for s in charts.ORDER],
        "chart": {"width": charts.SUMMARY_WIDTH, "height": charts.SUMMARY_HEIGHT},
    }
    if details:
        outcomes = [assessment.outcome(check.id) for check in CHECKS]
        context["outcomes"] = outcomes
        context["check_counts"] = Counter(o.result.status for o in outcomes if o is not None)
        context["review"] = _review_card(request, assessment)
    return render(request, "compliance/index.html", context)


@require_GET
@console_view()
def framework_detail(request: HttpRequest, slug: str) -> HttpResponse:
    framework = _framework_or_404(slug)
    details = access.can_view_details(request.user)
    assessment = assess(check_ids=checks_for_framework(framework))
    result = assessment.framework(framework, framework_controls(framework))
    context: dict[str, Any] = {
        "framework": framework,
        "result": result,
        "details": details,
        "assessment": assessment,
        "bar": charts.summary_bar(result.counts),
        "chart": {"width": charts.SUMMARY_WIDTH, "height": charts.SUMMARY_HEIGHT},
        "statuses": [(s, STATUS_LABELS[s]) for s in charts.ORDER],
    }
    if details:
        form = ControlFilterForm(request.GET or None)
        rows = list(result.controls)
        if form.is_valid():
            status, phase = form.cleaned_data["status"], form.cleaned_data["phase"]
            rows = [r for r in rows if (not status or r.status == status)]
            rows = [r for r in rows if (not phase or phase in r.control.lifecycle_phases)]
        context.update(
            rows=rows,
            filter_form=form,
            filtered=len(rows) != len(result.controls),
            trend=charts.trend(selectors.trend_points(framework)),
            formats=list(FORMATS),
        )
    return render(request, "compliance/framework.html", context)


@require_GET
@console_view()
def control_detail(request: HttpRequest, slug: str, control_id: str) -> HttpResponse:
    framework = _framework_or_404(slug)
    _require_details(request)
    if len(control_id) > 64 or not control_id.isprintable():
        raise Http404("No such control.")  # and keep NUL bytes away from PostgreSQL
    control = Control.objects.filter(framework=framework, control_id=control_id).select_related("framework").first()
    if control is None:
        raise Http404("No such control.")
    assessment = assess(check_ids=checks_for_control(control))
    row = assessment.control(control)
    related = []
    for reference in control.related:
        name, _, related_id = reference.partition(":")
        related.append({"reference": reference, "framework": name, "control_id": related_id})
    slugs = dict(Framework.objects.values_list("name", "slug"))
    for item in related:
        item["slug"] = slugs.get(item["framework"])
    return render(
        request,
        "compliance/control.html",
        {"framework": framework, "control": control, "row": row, "assessment": assessment, "related": related},
    )


@require_GET
@console_view()
def check_detail(request: HttpRequest, check_id: str) -> HttpResponse:
    _require_details(request)
    check = BY_ID.get(check_id)
    if check is None:
        raise Http404("No such evidence check.")
    assessment = assess(check_ids=[check.id])
    outcome = assessment.outcome(check.id)
    by_key = {
        f"{c.framework.name}:{c.control_id}": c
        for c in Control.objects.select_related("framework").order_by("framework__position", "position")
    }
    served = [by_key[key] for key in CHECK_CONTROLS[check.id] if key in by_key]
    return render(
        request,
        "compliance/check.html",
        {"check": check, "outcome": outcome, "assessment": assessment, "served": served},
    )


@require_GET
@console_view()
def report_download(request: HttpRequest, slug: str, fmt: str) -> HttpResponse:
    framework = _framework_or_404(slug)
    _require_details(request)
    if fmt not in FORMATS:
        raise Http404("No such report format.")
    exported = services.export_report(framework=framework, fmt=fmt, actor=request.user)
    response = HttpResponse(exported.content, content_type=exported.content_type)
    response["Content-Disposition"] = f'attachment; filename="{exported.filename}"'
    response["Cache-Control"] = "no-store"
    return response


@require_POST
@console_view()
def audit_review(request: HttpRequest) -> HttpResponse:
    if not access.can_record_review(request.user):
        raise PermissionDenied("Only an auditor can record an audit review.")
    back = safe_next(request, default="/compliance/")
    form = AuditReviewForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, error)
        return redirect(back)
    try:
        with transaction.atomic():
            event = services.record_audit_review(actor=request.user, note=form.cleaned_data["note"])
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect(back)
    count = event.details.get("failures_reviewed", 0)
    messages.success(
        request,
        f"Audit review recorded (event #{event.seq}): {count} security failure event{'s' if count != 1 else ''} "
        "marked as reviewed.",
    )
    return redirect(back)
