"""The keys API: read keys, versions and timelines; request lifecycle steps; use keys through the HSM.

- Reading: humans with a role see every key; a service account sees the keys it holds a grant on.
- Every lifecycle step (and generating a key) opens an approval request through
  `approvals.services.open_request`; the answer is 202 with the request, or the key itself when the
  policy's quorum is 0 and the step ran at once (200; 201 for a new key).
- Key use (encrypt, decrypt, sign, verify, mac, verify-mac) goes through `lifecycle.services.key_use`:
  the usage rule, the caller's grant, per-day counting and audited denials live there.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Exists, OuterRef, Prefetch, QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer

from accounts import services as accounts
from accounts.api.base import ApiViewSet, uuid_or_404
from accounts.api.permissions import ANY_ROLE, HUMAN_ROLES, USE
from approvals import registry
from approvals.api.serializers import RequestDetailSerializer
from approvals.api.views import request_detail
from approvals.models import ApprovalRequest, RequestState
from approvals.services import open_request
from kms_console.lib.errors import ApplicationError, Conflict
from kms_console.lib.roles import Role
from lifecycle.filtersets import KeyFilterSet
from lifecycle.models import Key, KeyGrant, KeyVersion
from lifecycle.selectors import key_timeline
from lifecycle.services import key_use

from .serializers import (
    DecryptResultSerializer,
    DecryptSerializer,
    EncryptResultSerializer,
    EncryptSerializer,
    GrantRequestSerializer,
    JustificationSerializer,
    KeyCreateSerializer,
    KeyDetailSerializer,
    KeySerializer,
    MacResultSerializer,
    MessageSerializer,
    OpenParametersSerializer,
    ProcessExceptionSerializer,
    SignResultSerializer,
    TimelineEntrySerializer,
    ValidResultSerializer,
    VerifyMacSerializer,
    VerifySerializer,
    VersionSerializer,
)

READERS = HUMAN_ROLES | {Role.API_CLIENT}
USE_ACTIONS = ("encrypt", "decrypt", "sign", "verify", "mac", "verify_mac")
# Lifecycle steps: the view action (URL uses dashes) -> the operation registered with the engine.
LIFECYCLE_ACTIONS = (
    "activate",
    "rotate",
    "suspend",
    "resume",
    "deactivate",
    "compromise",
    "schedule_destruction",
    "cancel_destruction",
    "process_exception",
    "grant",
    "backup",
    "export",
    "restore",
)


def key_queryset() -> QuerySet[Key]:
    """Keys with everything `KeySerializer` reads, in one query."""
    return Key.objects.select_related("policy", "hsm", "owner", "primary_version").order_by("name")


def key_detail_queryset() -> QuerySet[Key]:
    """Keys with what `KeyDetailSerializer` reads: versions (with their HSM), grants, certificate."""
    return (
        key_queryset()
        .select_related("destruction_certificate")
        .prefetch_related(
            Prefetch(
                "versions",
                queryset=KeyVersion.objects.select_related("hsm").prefetch_related("backups").order_by("number"),
            ),
            Prefetch("grants", queryset=KeyGrant.objects.filter(revoked_at__isnull=True).select_related("grantee")),
        )
    )


def key_body(key_id: Any) -> dict[str, Any]:
    return KeyDetailSerializer(key_detail_queryset().get(pk=key_id)).data


def _answer_for(req: ApprovalRequest, *, key_id: Any, executed_status: int) -> Response:
    """202 with the request while it waits for approvals; the key once the step ran at once."""
    if req.state == RequestState.PENDING:
        return Response(request_detail(req.pk), status=status.HTTP_202_ACCEPTED)
    if req.state == RequestState.FAILED:
        raise Conflict(
            f"The step ran at once and failed: {req.error}",
            code="execution_failed",
            details={"request": str(req.pk)},
        )
    return Response(key_body(key_id), status=executed_status)


def _extend_lifecycle(title: str, body: type[Serializer]) -> Any:
    return extend_schema(
        summary=title,
        request=body,
        responses={
            200: OpenApiResponse(KeyDetailSerializer, description="The step needed no approval and ran at once"),
            202: OpenApiResponse(RequestDetailSerializer, description="The approval request it opened"),
        },
    )


USE_RULES = (
    "Who may use a key: a service account holding a live grant on the key for this operation "
    "(grants are dual-controlled: POST keys/{id}/grant/), or the key's owner while a key_admin; "
    "tokens need the `use` scope. The key must allow it: encrypt, sign and mac use the primary "
    "version of an active key inside its originator period; decrypt and verify any active or "
    "deactivated version inside its recipient period; suspended, compromised, destroyed keys and "
    "keys waiting for destruction refuse (409). Every refusal is recorded in the audit trail; every "
    "use is counted per version, client, operation and day. Data: base64, at most 64 KiB decoded."
)


def _extend_use(title: str, body: type[Serializer], result: type[Serializer]) -> Any:
    return extend_schema(summary=title, description=USE_RULES, request=body, responses={200: result})


@extend_schema_view(
    list=extend_schema(summary="List keys (filters shared with the console)"),
    retrieve=extend_schema(summary="Show a key with its versions, grants and certificate of destruction"),
)
class KeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ApiViewSet):
    """Keys: metadata, versions, timeline, lifecycle requests and key use."""

    filterset_class = KeyFilterSet
    default_roles = READERS
    action_scopes = dict.fromkeys(USE_ACTIONS, USE)
    action_roles = {
        # The engine decides who may request what, and audits a refusal.
        "create": ANY_ROLE,
        **dict.fromkeys(LIFECYCLE_ACTIONS, ANY_ROLE),
        # The key-use service decides who may use a key, and audits every refusal.
        **dict.fromkeys(USE_ACTIONS, None),
        "timeline": HUMAN_ROLES,
    }

    def get_queryset(self) -> QuerySet[Key]:
        # Only the detail shows versions, grants and the certificate; other actions need the key alone.
        queryset = key_detail_queryset() if self.action == "retrieve" else key_queryset()
        if Role.API_CLIENT in accounts.roles_of(self.request.user):
            # A service account sees only the keys it may use.
            live = KeyGrant.objects.filter(key=OuterRef("pk"), grantee=self.request.user, revoked_at__isnull=True)
            queryset = queryset.filter(Exists(live))
        return queryset

    def get_serializer_class(self) -> type[Serializer]:
        return KeySerializer if self.action == "list" else KeyDetailSerializer

    # --- Generating a key -------------------------------------------------------------------------

    @extend_schema(
        summary="Request a new key (opens a dual-controlled generate request)",
        request=KeyCreateSerializer,
        responses={
            201: OpenApiResponse(KeyDetailSerializer, description="The policy needs no approval: the key exists"),
            202: OpenApiResponse(RequestDetailSerializer, description="The generate request waiting for approvals"),
        },
    )
    def create(self, request: Request) -> Response:
        body = KeyCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        req = open_request(
            operation="generate",
            requester=request.user,
            justification=body.validated_data["justification"],
            parameters=body.parameters(),
        )
        return _answer_for(req, key_id=req.result.get("key_id"), executed_status=status.HTTP_201_CREATED)

    # --- Versions and timeline --------------------------------------------------------------------

    @extend_schema(summary="List a key's versions", responses={200: VersionSerializer(many=True)})
    @action(detail=True, methods=["get"], filterset_class=None)
    def versions(self, request: Request, pk: str | None = None) -> Response:
        key = self.get_object()
        versions = (
            KeyVersion.objects.filter(key=key).select_related("hsm").prefetch_related("backups").order_by("number")
        )
        page = self.paginate_queryset(versions)
        context = {"primary_version_id": key.primary_version_id}
        return self.get_paginated_response(VersionSerializer(page, many=True, context=context).data)

    @extend_schema(
        summary="A key's history: every state change with the request and approvals behind it",
        responses={200: TimelineEntrySerializer(many=True)},
    )
    @action(detail=True, methods=["get"], filterset_class=None)
    def timeline(self, request: Request, pk: str | None = None) -> Response:
        key = self.get_object()
        page = self.paginate_queryset(key_timeline(key))
        return self.get_paginated_response(TimelineEntrySerializer(page, many=True).data)

    # --- Lifecycle steps --------------------------------------------------------------------------

    def _lifecycle(self, request: Request, operation: str, body_class: type[Serializer]) -> Response:
        key = self.get_object()
        if operation not in registry.operations():
            raise ApplicationError(
                f"'{operation.replace('_', '-')}' is not available on this installation.",
                code="operation_unavailable",
            )
        body = body_class(data=request.data)
        body.is_valid(raise_exception=True)
        parameters = dict(body.validated_data)
        justification = parameters.pop("justification")
        if "until" in parameters:
            parameters["until"] = parameters["until"].isoformat()
        req = open_request(
            operation=operation,
            requester=request.user,
            justification=justification,
            target_id=str(key.pk),
            parameters=parameters,
        )
        return _answer_for(req, key_id=key.pk, executed_status=status.HTTP_200_OK)

    @_extend_lifecycle("Request activation (pre-activation -> active)", JustificationSerializer)
    @action(detail=True, methods=["post"])
    def activate(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle(request, "activate", JustificationSerializer)

    @_extend_lifecycle("Request a rotation (a new primary version)", JustificationSerializer)
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle(request, "rotate", JustificationSerializer)

    @_extend_lifecycle("Suspend the key (immediate under the standard policy; opens a review)", JustificationSerializer)
    @action(detail=True, methods=["post"])
    def suspend(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle(request, "suspend", JustificationSerializer)

    @_extend_lifecycle("Request resumption of a suspended key", JustificationSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle(request, "resume", JustificationSerializer)

    @_extend_lifecycle("Request deactivation (decrypt and verify only)", JustificationSerializer)
    @action(detail=True, methods=["post"])
    def deactivate(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle(request, "deactivate", JustificationSerializer)

    @_extend_lifecycle(
        "Mark the key compromised (immediate under the standard policy; opens a review)", JustificationSerializer
    )
    @action(detail=True, methods=["post"])
    def compromise(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle(request, "compromise", JustificationSerializer)

    @_extend_lifecycle("Request scheduled destruction after the policy's waiting period", JustificationSerializer)
    @action(detail=True, methods=["post"], url_path="schedule-destruction")
    def schedule_destruction(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle(request, "schedule_destruction", JustificationSerializer)

    @_extend_lifecycle("Request cancellation of a scheduled destruction", JustificationSerializer)
    @action(detail=True, methods=["post"], url_path="cancel-destruction")
    def cancel_destruction(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle(request, "cancel_destruction", JustificationSerializer)

    @_extend_lifecycle(
        "Request a time-boxed exception letting a compromised key decrypt and verify", ProcessExceptionSerializer
    )
    @action(detail=True, methods=["post"], url_path="process-exception")
    def process_exception(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle(request, "process_exception", ProcessExceptionSerializer)

    @_extend_lifecycle("Request a grant of key use to a service account", GrantRequestSerializer)
    @action(detail=True, methods=["post"])
    def grant(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle(request, "grant", GrantRequestSerializer)

    @_extend_lifecycle(
        "Request a backup of the key (parameters as the backup operation defines)", OpenParametersSerializer
    )
    @action(detail=True, methods=["post"])
    def backup(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle(request, "backup", OpenParametersSerializer)

    @_extend_lifecycle("Request a wrapped export of the key to a recipient", OpenParametersSerializer)
    @action(detail=True, methods=["post"])
    def export(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle(request, "export", OpenParametersSerializer)

    @_extend_lifecycle("Request a restore of the key from a backup", OpenParametersSerializer)
    @action(detail=True, methods=["post"])
    def restore(self, request: Request, pk: str | None = None) -> Response:
        return self._lifecycle(request, "restore", OpenParametersSerializer)

    # --- Key use ----------------------------------------------------------------------------------

    @_extend_use("Encrypt with the primary version (AES-GCM)", EncryptSerializer, EncryptResultSerializer)
    @action(detail=True, methods=["post"], filterset_class=None)
    def encrypt(self, request: Request, pk: str | None = None) -> Response:
        body = EncryptSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = key_use.encrypt(
            key_id=uuid_or_404(pk, "key"),
            client=request.user,
            plaintext=body.validated_data["plaintext"],
            aad=body.validated_data.get("aad"),
        )
        ciphertext = key_use.format_ciphertext(result.version, result.output)
        return Response({"ciphertext": ciphertext, "key_version": result.version})

    @_extend_use("Decrypt (the ciphertext names its version)", DecryptSerializer, DecryptResultSerializer)
    @action(detail=True, methods=["post"], filterset_class=None)
    def decrypt(self, request: Request, pk: str | None = None) -> Response:
        body = DecryptSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = key_use.decrypt(
            key_id=uuid_or_404(pk, "key"),
            client=request.user,
            ciphertext=body.validated_data["ciphertext"],
            aad=body.validated_data.get("aad"),
        )
        return Response(DecryptResultSerializer({"plaintext": result.output, "key_version": result.version}).data)

    @_extend_use("Sign with the primary version (RSA-PSS SHA-256 or ECDSA)", MessageSerializer, SignResultSerializer)
    @action(detail=True, methods=["post"], filterset_class=None)
    def sign(self, request: Request, pk: str | None = None) -> Response:
        body = MessageSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = key_use.sign(
            key_id=uuid_or_404(pk, "key"), client=request.user, message=body.validated_data["message"]
        )
        return Response(SignResultSerializer({"signature": result.output, "key_version": result.version}).data)

    @_extend_use("Verify a signature", VerifySerializer, ValidResultSerializer)
    @action(detail=True, methods=["post"], filterset_class=None)
    def verify(self, request: Request, pk: str | None = None) -> Response:
        body = VerifySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = key_use.verify(
            key_id=uuid_or_404(pk, "key"),
            client=request.user,
            message=body.validated_data["message"],
            signature=body.validated_data["signature"],
            version=body.validated_data.get("key_version"),
        )
        return Response({"valid": result.valid, "key_version": result.version})

    @_extend_use("Compute an HMAC-SHA256 with the primary version", MessageSerializer, MacResultSerializer)
    @action(detail=True, methods=["post"], filterset_class=None)
    def mac(self, request: Request, pk: str | None = None) -> Response:
        body = MessageSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = key_use.mac(key_id=uuid_or_404(pk, "key"), client=request.user, message=body.validated_data["message"])
        return Response(MacResultSerializer({"mac": result.output, "key_version": result.version}).data)

    @_extend_use("Verify an HMAC-SHA256", VerifyMacSerializer, ValidResultSerializer)
    @action(detail=True, methods=["post"], url_path="verify-mac", filterset_class=None)
    def verify_mac(self, request: Request, pk: str | None = None) -> Response:
        body = VerifyMacSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = key_use.verify_mac(
            key_id=uuid_or_404(pk, "key"),
            client=request.user,
            message=body.validated_data["message"],
            tag=body.validated_data["mac"],
            version=body.validated_data.get("key_version"),
        )
        return Response({"valid": result.valid, "key_version": result.version})
