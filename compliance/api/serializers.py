"""Shapes of the compliance API's answers (output only; documented for drf-spectacular)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from ..checks.base import CHECK_STATUSES, CONTROL_STATUSES


class SummarySerializer(serializers.Serializer):
    passed = serializers.IntegerField(source="pass", help_text="Controls whose checks all pass.")
    warn = serializers.IntegerField()
    fail = serializers.IntegerField()
    not_applicable = serializers.IntegerField()
    not_assessed = serializers.IntegerField(help_text="Controls no evidence check serves: assess them by hand.")
    total = serializers.IntegerField()

    def to_representation(self, instance: Any) -> dict[str, Any]:
        # The wire name is "pass" (a Python keyword, hence the field's name above).
        data = super().to_representation(instance)
        data["pass"] = data.pop("passed")
        return {key: data[key] for key in ("pass", "warn", "fail", "not_applicable", "not_assessed", "total")}


class ChainSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    hash = serializers.CharField()


class CheckpointSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    head_hash = serializers.CharField()
    signed_at = serializers.DateTimeField()
    key_id = serializers.CharField()


class FrameworkSerializer(serializers.Serializer):
    slug = serializers.CharField(help_text="The name to use in ?framework= (e.g. pci-dss).")
    name = serializers.CharField()
    controls = serializers.IntegerField(help_text="Controls of the framework in the catalog.")
    summary = SummarySerializer()
    computed_at = serializers.DateTimeField()


class OffenderSerializer(serializers.Serializer):
    kind = serializers.CharField(help_text="key, version, request, user, policy, hsm, hsm_object, audit_event, backup…")
    label = serializers.CharField()
    reason = serializers.CharField()
    url = serializers.CharField(help_text="The object's console page (empty when it has none).")
    severity = serializers.ChoiceField(choices=["fail", "warn"])


class CheckResultSerializer(serializers.Serializer):
    id = serializers.CharField()
    title = serializers.CharField()
    description = serializers.CharField(help_text="What the check looks at, in plain words.")
    status = serializers.ChoiceField(choices=CHECK_STATUSES)
    figure = serializers.CharField(help_text='e.g. "47 of 48 active keys inside their cryptoperiod"')
    offender_count = serializers.IntegerField()
    offenders = OffenderSerializer(many=True, help_text="The first 200 offending objects, failures first.")
    notes = serializers.ListField(child=serializers.CharField())
    controls = serializers.ListField(child=serializers.CharField(), help_text='"<framework>:<control id>" served.')


class ControlSerializer(serializers.Serializer):
    framework = serializers.CharField(help_text="The framework's slug.")
    id = serializers.CharField(help_text="The control id as the standard prints it.")
    title = serializers.CharField()
    short_title = serializers.CharField()
    lifecycle_phases = serializers.ListField(child=serializers.CharField())
    summary = serializers.CharField(help_text="A paraphrase written for this console, not the standard's text.")
    evidence = serializers.ListField(child=serializers.CharField())
    status = serializers.ChoiceField(choices=CONTROL_STATUSES)
    figure = serializers.CharField()
    computed_at = serializers.DateTimeField()
    checks = CheckResultSerializer(many=True)


class AuditReviewSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, max_length=1000)


class AuditReviewRecordedSerializer(serializers.Serializer):
    seq = serializers.IntegerField(help_text="The audit event that records the review.")
    at = serializers.DateTimeField()
    failures_reviewed = serializers.IntegerField()
