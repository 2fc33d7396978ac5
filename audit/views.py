"""The audit trail page: a filterable list of events, and the verify button.

Reading the trail is itself recorded (`audit.read`, with the filters used), and so is every
verification (`audit.verified`, with its outcome). Readers: auditors and security officers.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods, require_POST

from kms_console.lib.web import AUDIT_READERS, console_view, paginate

from . import services
from .models import AuditEvent

PAGE_SIZE = 50


# The page's filter parameters. "from" and "to" (the labels of the date fields) work as well as
# "since" and "until"; anything else in the query string is named as ignored, never silently dropped.
DATE_ALIASES = {"from": "since", "to": "until"}
NOT_FILTERS = frozenset({"page"})


class AuditFilterForm(forms.Form):
    action = forms.CharField(
        required=False,
        max_length=64,
        help_text="Part of an action: login finds auth.login and auth.login_failed. End with a dot for a family (key.).",
    )
    actor = forms.CharField(required=False, max_length=150)
    target_type = forms.CharField(required=False, max_length=32, label="Target type")
    target_id = forms.CharField(required=False, max_length=64, label="Target id")
    since = forms.DateField(
        required=False,
        label="From",
        error_messages={"invalid": "Enter the start date as YYYY-MM-DD."},
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    until = forms.DateField(
        required=False,
        label="To",
        error_messages={"invalid": "Enter the end date as YYYY-MM-DD."},
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["action"].widget.attrs["placeholder"] = "e.g. login, approved or key."
        self.fields["actor"].widget.attrs["placeholder"] = "username or system"

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            self.add_error("until", "The end date must not be before the start date.")
        return data

    def apply(self, queryset: Any) -> Any:
        """Narrow the events by the filters that are valid (call after is_valid(), whatever it said)."""
        data = self.cleaned_data
        action = (data.get("action") or "").strip()
        if action.endswith("."):
            queryset = queryset.filter(action__startswith=action)
        elif action:
            queryset = queryset.filter(action__icontains=action)
        for field in ("actor", "target_type", "target_id"):
            value = (data.get(field) or "").strip()
            if value:
                queryset = queryset.filter(**{field: value})
        if data.get("since"):
            queryset = queryset.filter(at__gte=dt.datetime.combine(data["since"], dt.time.min, tzinfo=dt.UTC))
        if data.get("until"):
            end = dt.datetime.combine(data["until"], dt.time.min, tzinfo=dt.UTC) + dt.timedelta(days=1)
            queryset = queryset.filter(at__lt=end)
        return queryset

    def used_filters(self) -> dict[str, str]:
        if not self.is_bound or not hasattr(self, "cleaned_data"):
            return {}
        return {name: str(value) for name, value in self.cleaned_data.items() if value not in (None, "")}


def _filter_data(request: HttpRequest) -> tuple[Any, list[str]]:
    """The query string as the filter form's data ("from"/"to" read as "since"/"until"), and the
    names of parameters that are no filter of this page."""
    data = request.GET.copy()
    for alias, name in DATE_ALIASES.items():
        if alias in data:
            if not data.get(name):
                data[name] = data[alias]
            del data[alias]
    ignored = sorted(name for name in data if name not in AuditFilterForm.base_fields and name not in NOT_FILTERS)
    return (data or None), ignored


def _events_context(request: HttpRequest) -> dict[str, Any]:
    data, ignored = _filter_data(request)
    form = AuditFilterForm(data)
    queryset = AuditEvent.objects.order_by("-seq")
    if form.is_bound:
        # An invalid filter is shown next to its field and left out; the valid ones still apply.
        form.is_valid()
        queryset = form.apply(queryset)
    page = paginate(request, queryset, PAGE_SIZE)
    events = [{"event": event, "details": json.dumps(event.details, sort_keys=True)} for event in page]
    # Reading the trail is recorded (after the page was read, so the read itself is not on it).
    services.record(
        "audit.read",
        actor=request.user,
        target_type="audit",
        details={"filters": form.used_filters(), "page": page.number},
    )
    head_seq, head_hash = services.chain_head()
    return {
        "filter_form": form,
        "filter_errors": form.is_bound and bool(form.errors),
        "ignored_parameters": ignored,
        "page_obj": page,
        "events": events,
        "filtered": bool(form.used_filters()) or (form.is_bound and bool(form.errors)),
        "head_seq": head_seq,
        "head_hash": head_hash,
        "checkpoint": services.latest_checkpoint(),
    }


@console_view(*AUDIT_READERS)
@require_http_methods(["GET", "HEAD"])
def event_list(request: HttpRequest) -> HttpResponse:
    return render(request, "audit/event_list.html", _events_context(request))


@console_view(*AUDIT_READERS)
@require_POST
def verify(request: HttpRequest) -> HttpResponse:
    """Check the whole chain and every checkpoint now, and show the first broken sequence number."""
    error = ""
    try:
        result = services.verify_chain()
    except Exception as exc:  # the HSM holding the checkpoint key may be unreachable: say so, no 500
        result = None
        error = getattr(exc, "message", "") or "The checkpoint signatures could not be checked: the HSM did not answer."
    services.record(
        "audit.verified",
        actor=request.user,
        target_type="audit",
        details=(
            {"ok": result.ok, "checked": result.checked, "first_bad_seq": result.first_bad_seq}
            if result is not None
            else {"ok": False, "error": error[:200]}
        ),
    )
    context = _events_context(request)
    context.update({"verification": result, "verification_error": error})
    return render(request, "audit/event_list.html", context)
