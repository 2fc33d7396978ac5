"""Filters of the audit trail, shared by the console's audit page and the REST API."""

from __future__ import annotations

import datetime as dt
from typing import Any

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.utils import timezone
from django_filters.fields import IsoDateTimeField

from .models import AuditEvent

MAX_SEQ = 2**63 - 1  # the column is a 64-bit integer: larger numbers are bad input, not a database error


class SeqFilter(django_filters.NumberFilter):
    field_class = forms.IntegerField


class UtcDateTimeField(IsoDateTimeField):
    """An ISO 8601 time that can be expressed in UTC (0001-01-01 at 14:00+14:00 cannot: bad input)."""

    def to_python(self, value: Any) -> dt.datetime | None:
        parsed = super().to_python(value)
        if parsed is not None and timezone.is_aware(parsed):
            try:
                parsed.astimezone(dt.UTC)
            except OverflowError:
                raise ValidationError("This time lies outside the range of dates.", code="invalid") from None
        return parsed


class TimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcDateTimeField


class AuditEventFilterSet(django_filters.FilterSet):
    """`action` matches exactly, or every action of a family when it ends with a dot (`key.`).

    `since`/`until` bound the event time (ISO 8601, both inclusive); `after_seq` returns only
    events after a sequence number, for clients that follow the trail incrementally; `before_seq`
    pins the stretch newest-first pages walk through (every read appends an event).
    """

    action = django_filters.CharFilter(
        method="filter_action", max_length=64, help_text="An action (`key.created`), or a family of them (`key.`)."
    )
    actor = django_filters.CharFilter(max_length=150, help_text="Username of the actor, or `system`.")
    target_type = django_filters.CharFilter(
        max_length=32, help_text="key, request, user, token, job, policy, hsm, audit…"
    )
    target_id = django_filters.CharFilter(max_length=64, help_text="The id of the target object.")
    since = TimeFilter(field_name="at", lookup_expr="gte", help_text="Events at or after this time (ISO 8601).")
    until = TimeFilter(field_name="at", lookup_expr="lte", help_text="Events at or before this time (ISO 8601).")
    after_seq = SeqFilter(
        field_name="seq",
        lookup_expr="gt",
        min_value=0,
        max_value=MAX_SEQ,
        help_text="Only events with a higher sequence number (follow the trail incrementally).",
    )
    before_seq = SeqFilter(
        field_name="seq",
        lookup_expr="lt",
        min_value=1,
        max_value=MAX_SEQ,
        help_text="Only events with a lower sequence number: pins the stretch that newest-first pages walk.",
    )
    ordering = django_filters.OrderingFilter(
        fields=(("seq", "seq"),), help_text="`-seq` (default: newest first) or `seq` (oldest first)."
    )

    class Meta:
        model = AuditEvent
        fields = ["action", "actor", "target_type", "target_id", "since", "until", "after_seq", "before_seq"]

    def filter_action(self, queryset: QuerySet[AuditEvent], name: str, value: str) -> QuerySet[AuditEvent]:
        if not value:
            return queryset
        if value.endswith("."):
            return queryset.filter(action__startswith=value)
        return queryset.filter(action=value)
