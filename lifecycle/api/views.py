"""The lifecycle API besides keys: jobs, HSMs, policies and custodians.

Reads are for humans with a role. Changes (a policy version, an HSM registration, a user's roles)
are dual-controlled requests opened through `approvals.services.open_request`; the engine decides who
may open them (security officers) and the answer is 202 with the request.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, Exists, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import responsibilities
from accounts.api.base import ApiViewSet
from accounts.api.permissions import ANY_ROLE
from accounts.models import Acknowledgement
from approvals.api.serializers import RequestDetailSerializer
from approvals.api.views import request_detail
from approvals.models import ApprovalRequest, RequestState
from approvals.services import open_request
from kms_console.lib.errors import ApplicationError, Conflict, NotFound
from kms_console.lib.roles import Role
from lifecycle.filtersets import JobFilterSet
from lifecycle.models import Hsm, Job, Policy, PolicyVersion

from .serializers import (
    CustodianSerializer,
    HsmChangeSerializer,
    HsmSerializer,
    JobSerializer,
    PolicyChangeSerializer,
    PolicyDetailSerializer,
    PolicySerializer,
    RoleChangeSerializer,
)

User = get_user_model()

REQUEST_OPENED = {202: OpenApiResponse(RequestDetailSerializer, description="The approval request it opened")}


def request_answer(req: ApprovalRequest) -> Response:
    """202 with a request waiting for approvals; a failure at once is a 409 naming the request."""
    if req.state == RequestState.FAILED:
        raise Conflict(f"The step ran at once and failed: {req.error}", code="execution_failed")
    code = status.HTTP_202_ACCEPTED if req.state == RequestState.PENDING else status.HTTP_200_OK
    return Response(request_detail(req.pk), status=code)


# --- Jobs -----------------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="List HSM jobs"),
    retrieve=extend_schema(summary="Show an HSM job: status, attempts, error"),
)
class JobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ApiViewSet):
    serializer_class = JobSerializer
    filterset_class = JobFilterSet
    queryset = Job.objects.select_related("version", "hsm").order_by("-created_at", "id")


# --- HSMs -----------------------------------------------------------------------------------------


HEALTH_PARAMETER = OpenApiParameter(
    "health",
    OpenApiTypes.BOOL,
    description="Ask every token for its health (default true); false answers from the database only.",
)


class HsmViewSet(mixins.ListModelMixin, ApiViewSet):
    """Registered HSMs with their health; registering or retiring one is an hsm_change request."""

    serializer_class = HsmSerializer
    action_roles = {"create": ANY_ROLE}

    def get_queryset(self) -> QuerySet[Hsm]:
        live = Count("versions", filter=~Q(versions__state="destroyed"))
        return Hsm.objects.annotate(live_versions=live).order_by("name")

    @extend_schema(summary="List registered HSMs and their health", parameters=[HEALTH_PARAMETER])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        flag = request.query_params.get("health", "true").lower()
        if flag not in {"true", "false", "1", "0"}:
            raise ApplicationError("health takes true or false.", code="invalid", details={"health": ["true or false"]})
        page = self.paginate_queryset(self.get_queryset())
        # Health asks the token (a slot query and an object count): not a hot path, and one per HSM.
        health = {hsm.pk: hsm.health() for hsm in page} if flag in {"true", "1"} else {}
        serializer = HsmSerializer(page, many=True, context={"health": health})
        return self.get_paginated_response(serializer.data)

    @extend_schema(
        summary="Request the registration (or retirement) of an HSM (security officers; dual-controlled)",
        request=HsmChangeSerializer,
        responses=REQUEST_OPENED,
    )
    def create(self, request: Request) -> Response:
        body = HsmChangeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        parameters = dict(body.validated_data)
        justification = parameters.pop("justification")
        req = open_request(
            operation="hsm_change",
            requester=request.user,
            justification=justification,
            target_id=parameters["name"],
            parameters=parameters,
        )
        return request_answer(req)


# --- Policies -------------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="List key policies with their current settings"),
    retrieve=extend_schema(summary="Show a policy with all its versions"),
)
class PolicyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ApiViewSet):
    lookup_field = "name"
    # Policy names are plain words (lifecycle.policies.NAME_RE); anything else is no policy (404).
    lookup_value_regex = "[A-Za-z0-9._-]+"
    action_roles = {"create": ANY_ROLE}

    def get_queryset(self) -> QuerySet[Policy]:
        if self.action == "retrieve":
            versions = PolicyVersion.objects.order_by("-number")
        else:
            versions = PolicyVersion.objects.filter(is_current=True)
        return Policy.objects.prefetch_related(Prefetch("versions", queryset=versions)).order_by("name")

    def get_serializer_class(self) -> type[PolicySerializer]:
        return PolicyDetailSerializer if self.action == "retrieve" else PolicySerializer

    @extend_schema(
        summary="Propose a new policy or a new version of one (security officers; dual-controlled)",
        request=PolicyChangeSerializer,
        responses=REQUEST_OPENED,
    )
    def create(self, request: Request) -> Response:
        body = PolicyChangeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        req = open_request(
            operation="policy_change",
            requester=request.user,
            justification=body.validated_data["justification"],
            target_id=body.validated_data["name"],
            parameters=body.parameters(),
        )
        return request_answer(req)


# --- Custodians -----------------------------------------------------------------------------------


ROLE_PARAMETER = OpenApiParameter("role", OpenApiTypes.STR, enum=sorted(Role.values), description="Only this role")


class CustodianViewSet(mixins.ListModelMixin, ApiViewSet):
    """People and service accounts holding a role: their roles, second factor and acknowledgement."""

    serializer_class = CustodianSerializer
    lookup_field = "username"
    # What Django accepts in a username; anything else (control characters...) names nobody (404).
    lookup_value_regex = r"[\w.@+-]+"
    action_roles = {"roles": ANY_ROLE}

    def get_queryset(self) -> QuerySet[Any]:
        role = self.request.query_params.get("role")
        if role is not None and role not in Role.values:
            raise ApplicationError(
                f"role must be one of {', '.join(sorted(Role.values))}.",
                code="invalid",
                details={"role": ["Unknown role."]},
            )
        wanted = [role] if role else Role.values
        holders = User.objects.filter(groups__name__in=wanted).values("pk")
        confirmed = TOTPDevice.objects.filter(user=OuterRef("pk"), confirmed=True)
        latest_ack = (
            Acknowledgement.objects.filter(user=OuterRef("pk"), text_version=responsibilities.VERSION)
            .order_by("-acknowledged_at")
            .values("acknowledged_at")[:1]
        )
        return (
            User.objects.filter(pk__in=holders)
            .annotate(totp_confirmed=Exists(confirmed), acknowledged_at=Subquery(latest_ack))
            .prefetch_related("groups")
            .order_by("username")
        )

    def _row(self, user: Any, cutoff: dt.datetime) -> dict[str, Any]:
        roles = sorted({group.name for group in user.groups.all()} & set(Role.values))  # prefetched
        acknowledgement = None
        if Role.CUSTODIAN in roles:
            at = user.acknowledged_at
            acknowledgement = {"current": at is not None and at > cutoff, "acknowledged_at": at}
        return {
            "username": user.username,
            "email": user.email,
            "is_active": user.is_active,
            "roles": roles,
            "totp_confirmed": user.totp_confirmed,
            "acknowledgement": acknowledgement,
            "last_login": user.last_login,
        }

    @extend_schema(
        summary="List users holding a role, with TOTP and acknowledgement status", parameters=[ROLE_PARAMETER]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        cutoff = timezone.now() - dt.timedelta(days=settings.KMS_ACKNOWLEDGEMENT_VALID_DAYS)
        rows = [self._row(user, cutoff) for user in page]
        return self.get_paginated_response(CustodianSerializer(rows, many=True).data)

    @extend_schema(
        summary="Propose a new set of roles for a user (security officers; dual-controlled)",
        request=RoleChangeSerializer,
        responses=REQUEST_OPENED,
    )
    @action(detail=True, methods=["post"])
    def roles(self, request: Request, username: str | None = None) -> Response:
        user = User.objects.filter(username=username).first()
        if user is None:
            raise NotFound("No such user.")
        body = RoleChangeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        req = open_request(
            operation="custodian_change",
            requester=request.user,
            justification=body.validated_data["justification"],
            target_id=user.get_username(),
            parameters={"username": user.get_username(), "roles": body.validated_data["roles"]},
        )
        return request_answer(req)
