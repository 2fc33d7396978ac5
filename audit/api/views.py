"""The audit API: read the trail and its checkpoints, and verify it. Reading is itself recorded.

Who may read: auditors (compliance officers) and security officers, who answer for the trail;
everybody else gets 403, and the refusal is recorded too (`audit.read_denied`). Every read that
is answered leaves an `audit.read` event naming the view, the filters and what was returned.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics, mixins
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.base import ApiViewSet
from accounts.api.permissions import ApiAccessMixin, ScopeAndRole
from audit import services
from audit.filtersets import MAX_SEQ, AuditEventFilterSet
from audit.models import AuditEvent, Checkpoint
from kms_console.lib.errors import NotFound
from kms_console.lib.openapi import ApiAutoSchema
from kms_console.lib.roles import Role

from .serializers import AuditEventSerializer, CheckpointSerializer, VerifySerializer

AUDIT_READERS = frozenset({Role.AUDITOR, Role.SECURITY_OFFICER})
# Query parameters worth recording with a read (values are cut short: they are client input).
RECORDED_PARAMS = (*AuditEventFilterSet.base_filters, "page", "page_size")
MAX_RECORDED_VALUE = 100


def _recorded_filters(request: Request) -> dict[str, str]:
    return {
        name: request.query_params[name][:MAX_RECORDED_VALUE]
        for name in RECORDED_PARAMS
        if name in request.query_params
    }


class AuditAccessMixin(ApiAccessMixin):
    """Audit readers only; a refused reader is recorded before the 403 goes out."""

    default_roles = AUDIT_READERS
    audit_view = "audit"

    def check_permissions(self, request: Request) -> None:
        try:
            super().check_permissions(request)  # type: ignore[misc]
        except exceptions.PermissionDenied as exc:
            if request.user and request.user.is_authenticated:
                services.record(
                    "audit.read_denied",
                    actor=request.user,
                    target_type="audit",
                    details={"view": self.audit_view, "reason": str(exc.get_codes())},
                )
            raise


class AuditEventViewSet(AuditAccessMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, ApiViewSet):
    """The events of the trail, newest first unless `ordering=seq`.

    Every read appends an event, which moves newest-first pages on by one; to walk a fixed stretch,
    pass `before_seq` (one more than the first page's top number), or read oldest first.
    """

    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilterSet
    lookup_field = "seq"
    lookup_value_regex = "[0-9]+"
    audit_view = "events"

    def get_queryset(self) -> QuerySet[AuditEvent]:
        return services.events()

    @extend_schema(summary="List audit events (each read is recorded as an audit.read event)")
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(queryset)
        data = self.get_serializer(page, many=True).data
        response = self.get_paginated_response(data)
        seqs = [row["seq"] for row in data]
        services.record_read(
            actor=request.user,
            what="events",
            filters=_recorded_filters(request),
            count=response.data["count"],
            returned=len(seqs),
            lowest_seq=min(seqs, default=None),
            highest_seq=max(seqs, default=None),
        )
        return response

    @extend_schema(
        summary="Show one audit event by its sequence number (recorded as an audit.read event)",
        parameters=[OpenApiParameter("seq", OpenApiTypes.INT, OpenApiParameter.PATH, description="Sequence number.")],
    )
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        seq = int(kwargs["seq"])
        event = AuditEvent.objects.filter(seq=seq).first() if seq <= MAX_SEQ else None
        if event is None:
            raise NotFound("No audit event has that sequence number.")
        data = self.get_serializer(event).data
        services.record_read(actor=request.user, what="event", seq=event.seq)
        return Response(data)


class CheckpointViewSet(AuditAccessMixin, mixins.ListModelMixin, ApiViewSet):
    """Signed checkpoints, newest first: what an outside party anchors the trail with."""

    serializer_class = CheckpointSerializer
    audit_view = "checkpoints"

    def get_queryset(self) -> QuerySet[Checkpoint]:
        return Checkpoint.objects.order_by("-seq", "-id")

    @extend_schema(summary="List signed checkpoints (recorded as an audit.read event)")
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().list(request, *args, **kwargs)
        services.record_read(
            actor=request.user,
            what="checkpoints",
            filters=_recorded_filters(request),
            count=response.data["count"],
        )
        return response


class AuditVerifyView(AuditAccessMixin, generics.GenericAPIView):
    """Check the whole chain and every signed checkpoint now, as `manage.py kms_audit verify` does."""

    permission_classes = [ScopeAndRole]
    schema = ApiAutoSchema()
    serializer_class = VerifySerializer
    pagination_class = None
    audit_view = "verify"

    @extend_schema(
        summary="Verify the audit trail: hash chain and HSM-signed checkpoints",
        description=(
            "`ok` is false when an event was edited, deleted, inserted or reordered, the tail was cut "
            "after a checkpoint, a checkpoint's signature does not verify, or the chain was rewritten; "
            "`first_bad_seq` then names the first sequence number that cannot be trusted. "
            "The check is recorded as an audit.verified event. 503 when the HSM cannot be reached."
        ),
        responses={200: VerifySerializer},
    )
    def get(self, request: Request) -> Response:
        result = services.verify_chain()
        services.record_verification(result, actor=request.user)
        return Response(VerifySerializer(result.as_dict()).data)
