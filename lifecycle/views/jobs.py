"""Job pages: the list, one job, and the status poll that keeps open pages current."""

from __future__ import annotations

import uuid

from django import forms
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_http_methods

from kms_console.lib.web import console_view, empty_choice, paginate

from ..filtersets import JobFilterSet
from ..models import Job, JobKind, JobStatus
from ..models.jobs import ACTIVE_JOB_STATUSES

JOB_STATUS_MAX_IDS = 50


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
