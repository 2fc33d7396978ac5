"""The compliance API: frameworks with their summaries, controls with their evidence, reports, reviews.

Every console role (and service account) reads the framework summaries; controls, checks and
reports are for auditors and security officers; only auditors record audit reviews
(`compliance.access`). GETs need the `read` scope, the review the `request` scope. Bad framework
or format names answer 400 in the API's error shape, never 5xx.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, permissions, status
from rest_framework.generics import GenericAPIView
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.authentication import token_scopes
from accounts.models import ApiToken
from kms_console.lib.errors import NotFound
from kms_console.lib.openapi import ApiAutoSchema, ErrorSerializer

from .. import access, services
from ..assessment import assess, checks_for_framework, framework_controls
from ..checks import BY_ID, CHECKS
from ..mapping import CHECK_CONTROLS
from ..models import Control, Framework
from ..reports import FORMATS
from .serializers import (
    AuditReviewRecordedSerializer,
    AuditReviewSerializer,
    CheckResultSerializer,
    ControlSerializer,
    FrameworkSerializer,
)

FRAMEWORK_PARAM = OpenApiParameter(
    "framework",
    OpenApiTypes.STR,
    required=True,
    description="A framework's slug (pci-dss, hipaa, nist-800-53, nist-800-57).",
)
FORMAT_PARAM = OpenApiParameter(
    "format", OpenApiTypes.STR, required=True, enum=list(FORMATS), description="Report format."
)


class CompliancePermission(permissions.BasePermission):
    """The credentials' scope first (`read` for GETs, `request` for the review), then the role."""

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not user or not user.is_authenticated:
            return False  # 401 with the challenge
        scope = ApiToken.Scope.READ if request.method in permissions.SAFE_METHODS else ApiToken.Scope.REQUEST
        if scope not in token_scopes(request):
            raise exceptions.PermissionDenied(f"This needs a token with the '{scope}' scope.", code="scope_required")
        if not view.role_allows(user):
            raise exceptions.PermissionDenied(view.role_refusal, code="role_required")
        return True


class IgnoreFormatParameter(BaseContentNegotiation):
    """JSON for every answer, whatever `?format=` says: here it names the report, not a renderer."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Request, renderers: list[Any], format_suffix: str | None = None) -> Any:
        renderer = renderers[0]
        return renderer, renderer.media_type


class ComplianceView(GenericAPIView):
    permission_classes = [CompliancePermission]
    # The answers are computed, not model rows; this tells drf-spectacular there is no model to inspect.
    queryset = Framework.objects.none()
    schema = ApiAutoSchema()
    role_refusal = "Controls, evidence and reports are for auditors and security officers."

    def role_allows(self, user: Any) -> bool:
        return access.can_view_details(user)


def _framework(request: Request) -> Framework:
    try:
        return services.get_framework(request.query_params.get("framework"))
    except NotFound as exc:
        raise exceptions.ValidationError({"framework": [exc.message]}) from None


def _check_body(check_id: str, result: Any, controls: list[str]) -> dict[str, Any]:
    check = BY_ID[check_id]
    return {
        "id": check.id,
        "title": check.title,
        "description": check.description,
        **result.as_dict(),
        "controls": controls,
    }


class FrameworkListView(ComplianceView):
    """Every framework of the catalog with its pass / warn / fail summary."""

    serializer_class = FrameworkSerializer
    role_refusal = "The compliance summary is for users with a role."

    def role_allows(self, user: Any) -> bool:
        return access.can_view_summary(user)

    @extend_schema(
        summary="Frameworks and where the estate stands against each", responses=FrameworkSerializer(many=True)
    )
    def get(self, request: Request) -> Response:
        frameworks = list(Framework.objects.order_by("position"))
        controls = list(Control.objects.select_related("framework").order_by("position"))
        assessment = assess()
        rows = []
        for framework in frameworks:
            result = assessment.framework(framework, [c for c in controls if c.framework_id == framework.pk])
            rows.append(
                {
                    "slug": framework.slug,
                    "name": framework.name,
                    "controls": result.total,
                    "summary": {**result.counts, "total": result.total},
                    "computed_at": assessment.computed_at,
                }
            )
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(FrameworkSerializer(page, many=True).data)


class ControlListView(ComplianceView):
    """One framework's controls, each with its status, figure and the evidence checks behind it."""

    serializer_class = ControlSerializer

    @extend_schema(
        operation_id="compliance_controls_list",
        summary="A framework's controls with their status and evidence",
        parameters=[FRAMEWORK_PARAM],
        responses=ControlSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        framework = _framework(request)
        assessment = assess(check_ids=checks_for_framework(framework))
        result = assessment.framework(framework, framework_controls(framework))
        rows = []
        for row in result.controls:
            rows.append(
                {
                    "framework": framework.slug,
                    "id": row.control.control_id,
                    "title": row.control.title,
                    "short_title": row.control.short_title,
                    "lifecycle_phases": row.control.lifecycle_phases,
                    "summary": row.control.summary,
                    "evidence": row.control.evidence,
                    "status": row.status,
                    "figure": row.figure,
                    "computed_at": assessment.computed_at,
                    "checks": [_check_body(o.check.id, o.result, CHECK_CONTROLS[o.check.id]) for o in row.outcomes],
                }
            )
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(ControlSerializer(page, many=True).data)


class CheckListView(ComplianceView):
    """Every evidence check with its result and offending objects."""

    serializer_class = CheckResultSerializer

    @extend_schema(
        operation_id="compliance_checks_list",
        summary="Evidence checks with their results and offending objects",
        responses=CheckResultSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        assessment = assess()
        rows = [_check_body(c.id, assessment.results[c.id], CHECK_CONTROLS[c.id]) for c in CHECKS]
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(CheckResultSerializer(page, many=True).data)


class CheckDetailView(ComplianceView):
    serializer_class = CheckResultSerializer

    @extend_schema(
        operation_id="compliance_checks_retrieve",
        summary="One evidence check with its result and offending objects",
        parameters=[
            OpenApiParameter("check_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="e.g. cryptoperiod")
        ],
    )
    def get(self, request: Request, check_id: str) -> Response:
        if check_id not in BY_ID:
            raise NotFound("No such evidence check.")
        assessment = assess(check_ids=[check_id])
        body = _check_body(check_id, assessment.results[check_id], CHECK_CONTROLS[check_id])
        return Response(CheckResultSerializer(body).data)


class ReportView(ComplianceView):
    """A framework's report as a file; every download is recorded (compliance.report_exported)."""

    content_negotiation_class = IgnoreFormatParameter
    pagination_class = None

    @extend_schema(
        operation_id="compliance_report_retrieve",
        summary="Download a framework's compliance report (CSV, JSON, PDF or OSCAL assessment results)",
        parameters=[FRAMEWORK_PARAM, FORMAT_PARAM],
        responses={
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR,
                description="The report as a file: CSV (one row per control), JSON (format=json, or OSCAL "
                "assessment results for format=oscal) or PDF. Content-Disposition names the file.",
            ),
            (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT),
            (200, "application/pdf"): OpenApiResponse(OpenApiTypes.BINARY),
            (400, "application/json"): OpenApiResponse(ErrorSerializer, description="Unknown framework or format."),
        },
    )
    def get(self, request: Request) -> HttpResponse:
        framework = _framework(request)
        fmt = request.query_params.get("format")
        if fmt not in FORMATS:
            raise exceptions.ValidationError({"format": [f"Choose one of {', '.join(FORMATS)}."]})
        exported = services.export_report(framework=framework, fmt=fmt, actor=request.user)
        response = HttpResponse(exported.content, content_type=exported.content_type)
        response["Content-Disposition"] = f'attachment; filename="{exported.filename}"'
        response["Cache-Control"] = "no-store"
        return response


class AuditReviewView(ComplianceView):
    """An auditor records that the security failures so far were reviewed (`audit.reviewed`)."""

    serializer_class = AuditReviewSerializer
    pagination_class = None
    role_refusal = "Only an auditor can record an audit review."

    def role_allows(self, user: Any) -> bool:
        return access.can_record_review(user)

    @extend_schema(
        operation_id="compliance_audit_review_create",
        summary="Record that the failed sign-ins and second-factor failures were reviewed",
        request=AuditReviewSerializer,
        responses={201: AuditReviewRecordedSerializer},
    )
    def post(self, request: Request) -> Response:
        body = AuditReviewSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with transaction.atomic():
            event = services.record_audit_review(actor=request.user, note=body.validated_data.get("note", ""))
        data = {"seq": event.seq, "at": event.at, "failures_reviewed": event.details.get("failures_reviewed", 0)}
        return Response(AuditReviewRecordedSerializer(data).data, status=status.HTTP_201_CREATED)
