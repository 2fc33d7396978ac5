"""Filters shared by the console's request lists and the REST API."""

from __future__ import annotations

import django_filters

from .models import ApprovalRequest, RequestState


class ApprovalRequestFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=RequestState.choices)
    operation = django_filters.CharFilter()
    target_type = django_filters.CharFilter()
    target_id = django_filters.CharFilter()
    requester = django_filters.CharFilter(field_name="requester__username")

    class Meta:
        model = ApprovalRequest
        fields = ["state", "operation", "target_type", "target_id", "requester"]
