"""Serializers of the requests API: what an approver sees, and the small shapes they send back."""

from __future__ import annotations

import logging
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from approvals import registry
from approvals.models import ApprovalRequest, Decision
from kms_console.lib.errors import ApplicationError

logger = logging.getLogger(__name__)


class TargetSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="key, policy, user, hsm or request")
    id = serializers.CharField(help_text="The target's id (empty for a key that does not exist yet)")
    label = serializers.CharField()


class QuorumSerializer(serializers.Serializer):
    approvals = serializers.IntegerField(help_text="Approvals needed (M)")
    approver_roles = serializers.ListField(child=serializers.CharField())
    approve_by = serializers.DateTimeField(help_text="Past this the request expires")
    execute_within_hours = serializers.IntegerField()
    execute_by = serializers.DateTimeField(allow_null=True, help_text="Set once the quorum is reached")


class DecisionSerializer(serializers.ModelSerializer):
    approver = serializers.CharField(source="approver.username")

    class Meta:
        model = Decision
        fields = ["approver", "decision", "comment", "decided_at", "approver_roles"]
        read_only_fields = fields


class RequestSerializer(serializers.ModelSerializer):
    """An approval request: what it binds (digest), how far its approvals got, and what came of it.

    Reads `decisions` from a prefetch (`approvals.api.views.request_queryset`).
    """

    title = serializers.SerializerMethodField()
    target = serializers.SerializerMethodField()
    requester = serializers.CharField(source="requester.username")
    policy = serializers.CharField(source="policy_ref")
    quorum = serializers.SerializerMethodField()
    approvals = serializers.SerializerMethodField()
    approvals_received = serializers.SerializerMethodField()
    rejection = serializers.SerializerMethodField()

    class Meta:
        model = ApprovalRequest
        fields = [
            "id",
            "operation",
            "title",
            "target",
            "parameters",
            "justification",
            "requester",
            "policy",
            "created_at",
            "digest",
            "quorum",
            "state",
            "state_changed_at",
            "approvals",
            "approvals_received",
            "rejection",
            "approved_at",
            "finished_at",
            "result",
            "error",
            "execution_count",
            "review_of",
        ]
        read_only_fields = fields

    def get_title(self, obj: ApprovalRequest) -> str:
        try:
            return registry.get(obj.operation).title
        except ApplicationError:
            return obj.operation

    @extend_schema_field(TargetSerializer)
    def get_target(self, obj: ApprovalRequest) -> dict[str, Any]:
        return {"type": obj.target_type, "id": obj.target_id, "label": obj.target_label}

    @extend_schema_field(QuorumSerializer)
    def get_quorum(self, obj: ApprovalRequest) -> dict[str, Any]:
        return QuorumSerializer(
            {
                "approvals": obj.required_approvals,
                "approver_roles": obj.approver_roles,
                "approve_by": obj.approve_by,
                "execute_within_hours": obj.execute_within_hours,
                "execute_by": obj.execute_by,
            }
        ).data

    def _decisions(self, obj: ApprovalRequest) -> list[Decision]:
        return list(obj.decisions.all())  # prefetched

    @extend_schema_field(DecisionSerializer(many=True))
    def get_approvals(self, obj: ApprovalRequest) -> list[dict[str, Any]]:
        approvals = [d for d in self._decisions(obj) if d.decision == Decision.Kind.APPROVE]
        return DecisionSerializer(approvals, many=True).data

    def get_approvals_received(self, obj: ApprovalRequest) -> int:
        return sum(1 for d in self._decisions(obj) if d.decision == Decision.Kind.APPROVE)

    @extend_schema_field(DecisionSerializer(allow_null=True))
    def get_rejection(self, obj: ApprovalRequest) -> dict[str, Any] | None:
        rejection = next((d for d in self._decisions(obj) if d.decision == Decision.Kind.REJECT), None)
        return DecisionSerializer(rejection).data if rejection else None


class RequestDetailSerializer(RequestSerializer):
    """A request with the registry's plain-words description of what approving it will do."""

    description = serializers.SerializerMethodField()

    class Meta(RequestSerializer.Meta):
        fields = [*RequestSerializer.Meta.fields, "description"]
        read_only_fields = fields

    def get_description(self, obj: ApprovalRequest) -> str:
        try:
            return registry.get(obj.operation).describe(obj)
        except Exception:
            # Describing is presentation: an operation no longer registered, or a target that is
            # gone, must not turn a read into a 500. Log it, and say what the record itself says.
            logger.warning("could not describe request %s", obj.pk, exc_info=True)
            return f"{self.get_title(obj)} of {obj.target_label or obj.target_id}"


class ApproveSerializer(serializers.Serializer):
    digest = serializers.CharField(
        max_length=128, help_text="The request's digest as you reviewed it (SHA-256 hex of what it binds)"
    )
    otp = serializers.CharField(max_length=32, help_text="A current TOTP code of your confirmed device")
    comment = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class RejectSerializer(serializers.Serializer):
    otp = serializers.CharField(max_length=32, help_text="A current TOTP code of your confirmed device")
    comment = serializers.CharField(max_length=2000, help_text="Why you reject the request (required)")
    digest = serializers.CharField(
        max_length=128, required=False, allow_blank=True, default="", help_text="Optional; must match if given"
    )
