"""The requests API: read approval requests, and approve, reject, cancel or retry them.

Every rule of dual control lives in `approvals.services`; these views validate the body's shape,
call the one service function, and answer with the request as it is afterwards.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api.base import ApiViewSet, uuid_or_404
from accounts.api.permissions import ANY_ROLE, APPROVE, REQUEST
from approvals import selectors, services
from approvals.filtersets import ApprovalRequestFilterSet
from approvals.models import ApprovalRequest, Decision
from kms_console.lib.errors import ApplicationError

from .serializers import ApproveSerializer, RejectSerializer, RequestDetailSerializer, RequestSerializer


def request_queryset(queryset: QuerySet[ApprovalRequest] | None = None) -> QuerySet[ApprovalRequest]:
    """Requests with what their serializer reads: requester, and decisions with their approvers."""
    queryset = ApprovalRequest.objects.all() if queryset is None else queryset
    return queryset.select_related("requester").prefetch_related(
        Prefetch("decisions", queryset=Decision.objects.select_related("approver").order_by("decided_at", "id"))
    )


def request_detail(request_id: Any) -> dict[str, Any]:
    """The request as it is now (after a decision, its execution may have moved it on)."""
    return RequestDetailSerializer(request_queryset().get(pk=request_id)).data


WAITING_FOR = OpenApiParameter(
    "waiting_for",
    OpenApiTypes.STR,
    enum=["me"],
    description="`me`: only pending requests you may still decide on (your inbox).",
)


class RequestViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ApiViewSet):
    """Approval requests. Humans with a role read them all; deciding takes the `approve` scope and
    the approver's current TOTP code; service accounts and auditors never decide."""

    serializer_class = RequestSerializer
    filterset_class = ApprovalRequestFilterSet
    action_scopes = {"approve": APPROVE, "reject": APPROVE, "retry": APPROVE, "cancel": REQUEST}
    # Let every role reach the engine, which refuses ineligible approvers itself and audits it.
    action_roles = {"approve": ANY_ROLE, "reject": ANY_ROLE}

    def get_queryset(self) -> QuerySet[ApprovalRequest]:
        if self.action == "list":
            waiting_for = self.request.query_params.get("waiting_for")
            if waiting_for is not None:
                if waiting_for != "me":
                    raise ApplicationError(
                        "waiting_for takes the value 'me'.",
                        code="invalid",
                        details={"waiting_for": ["Use 'me'."]},
                    )
                return request_queryset(selectors.requests_waiting_for(self.request.user))
        return request_queryset().order_by("-created_at", "id")

    def get_serializer_class(self) -> type[RequestSerializer]:
        return RequestDetailSerializer if self.action == "retrieve" else RequestSerializer

    @extend_schema(summary="List approval requests", parameters=[WAITING_FOR])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Show a request: what it binds, its digest, its approvals so far, what approving does")
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        summary="Approve a request (quote its digest and your TOTP code)",
        request=ApproveSerializer,
        responses={200: RequestDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str | None = None) -> Response:
        request_id = uuid_or_404(pk, "request")
        body = ApproveSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.decide(
            request_id=request_id,
            approver=request.user,
            decision=Decision.Kind.APPROVE,
            otp=body.validated_data["otp"],
            digest=body.validated_data["digest"],
            comment=body.validated_data["comment"],
        )
        return Response(request_detail(request_id))

    @extend_schema(
        summary="Reject a request (with your TOTP code and a reason)",
        request=RejectSerializer,
        responses={200: RequestDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str | None = None) -> Response:
        request_id = uuid_or_404(pk, "request")
        body = RejectSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.decide(
            request_id=request_id,
            approver=request.user,
            decision=Decision.Kind.REJECT,
            otp=body.validated_data["otp"],
            digest=body.validated_data["digest"] or None,
            comment=body.validated_data["comment"],
        )
        return Response(request_detail(request_id))

    @extend_schema(summary="Cancel your own pending request", request=None, responses={200: RequestDetailSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        request_id = uuid_or_404(pk, "request")
        services.cancel(request_id=request_id, actor=request.user)
        return Response(request_detail(request_id))

    @extend_schema(
        summary="Retry a failed execution (custodians); the step never runs twice",
        request=None,
        responses={200: RequestDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        request_id = uuid_or_404(pk, "request")
        services.retry(request_id=request_id, actor=request.user)
        return Response(request_detail(request_id))
