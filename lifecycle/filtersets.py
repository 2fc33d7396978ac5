"""Filters shared by the console's lists and the REST API (one FilterSet per model)."""

from __future__ import annotations

import django_filters
from django.db import connection
from django.db.models import Q, QuerySet

from .hsm.base import ALGORITHMS
from .models import Job, JobKind, JobStatus, Key
from .states import KeyState


class KeyFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=KeyState.choices)
    algorithm = django_filters.ChoiceFilter(choices=[(name, name) for name in sorted(ALGORITHMS)])
    policy = django_filters.CharFilter(field_name="policy__name")
    tag = django_filters.CharFilter(method="filter_tag")
    q = django_filters.CharFilter(method="filter_text", label="Text")

    class Meta:
        model = Key
        fields = ["state", "algorithm", "usage", "policy", "tag", "q"]

    def filter_tag(self, queryset: QuerySet[Key], name: str, value: str) -> QuerySet[Key]:
        if not value:
            return queryset
        # Tags are a JSON list. PostgreSQL answers `contains` (jsonb @>); SQLite has no such lookup
        # (Django raises NotSupportedError), so there match the quoted tag in the JSON text: tags
        # are plain words (lifecycle.actions.TAG_RE), so '"pci"' appears only for the tag pci.
        if connection.features.supports_json_field_contains:
            return queryset.filter(tags__contains=[value])
        return queryset.filter(tags__icontains=f'"{value}"')

    def filter_text(self, queryset: QuerySet[Key], name: str, value: str) -> QuerySet[Key]:
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(Q(name__icontains=value) | Q(description__icontains=value))


class JobFilterSet(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=JobStatus.choices)
    kind = django_filters.ChoiceFilter(choices=JobKind.choices)
    key = django_filters.UUIDFilter(field_name="key_id")

    class Meta:
        model = Job
        fields = ["status", "kind", "key"]
