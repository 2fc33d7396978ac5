"""REST API of backups, escrow, restores, exports and imports (mounted under /api/v1/backups/).

Opening a backup, export or restore request goes through `POST keys/{id}/backup|export|restore/`
(the keys API opens any registered operation); this module adds what is particular to backups:
reading backups, escrow ceremonies, restores and exports; opening an escrow ceremony or an import;
entering a restore share; fetching the import key. Views validate shapes and call one service; the
services and the dual-control engine hold every rule. Blobs are never listed: an export's wrapped
key is given to its requester only, by `exports/{id}/download/`.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter

from accounts.api.base import ApiViewSet, uuid_or_404
from accounts.api.permissions import APPROVE, READ, REQUEST
from approvals import services as approvals
from approvals.api.serializers import RequestDetailSerializer
from approvals.api.views import request_detail
from kms_console.lib.errors import ApplicationError, NotFound
from kms_console.lib.roles import Role

from ..models import Backup, EscrowCeremony, EscrowShare, Export, Hsm, Restore
from .distribution import export_for_download, import_key_info
from .restore import enter_share

CUSTODIAN = frozenset({Role.CUSTODIAN})
KEY_ADMIN = frozenset({Role.KEY_ADMIN})


# --- Serializers ----------------------------------------------------------------------------------


class BackupSerializer(serializers.ModelSerializer):
    key = serializers.UUIDField(source="version.key_id", read_only=True)
    key_name = serializers.CharField(source="version.key.name", read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)
    kek = serializers.CharField(source="kek_version.key.name", read_only=True)
    kek_version = serializers.IntegerField(source="kek_version.number", read_only=True)

    class Meta:
        model = Backup
        fields = [
            "id",
            "key",
            "key_name",
            "version",
            "kcv",
            "kek",
            "kek_version",
            "created_at",
            "verified_at",
            "verify_failed_at",
            "verify_error",
            "destroyed_at",
        ]
        read_only_fields = fields


class ShareSerializer(serializers.ModelSerializer):
    holder = serializers.CharField(source="holder.username", read_only=True)

    class Meta:
        model = EscrowShare
        fields = ["index", "holder", "fingerprint", "retrieved_at"]
        read_only_fields = fields


class CeremonySerializer(serializers.ModelSerializer):
    kek = serializers.CharField(source="kek_version.key.name", read_only=True)
    kek_id = serializers.UUIDField(source="kek_version.key_id", read_only=True)
    kek_version = serializers.IntegerField(source="kek_version.number", read_only=True)
    kek_kcv = serializers.CharField(source="kek_version.kcv", read_only=True)
    shares = ShareSerializer(many=True, read_only=True)

    class Meta:
        model = EscrowCeremony
        fields = [
            "id",
            "kek",
            "kek_id",
            "kek_version",
            "kek_kcv",
            "state",
            "threshold",
            "share_count",
            "recovery_fingerprint",
            "created_at",
            "distributed_at",
            "completed_at",
            "ended_at",
            "request",
            "shares",
        ]
        read_only_fields = fields


class RestoreSerializer(serializers.ModelSerializer):
    key = serializers.UUIDField(source="backup.version.key_id", read_only=True)
    version = serializers.IntegerField(source="backup.version.number", read_only=True)
    hsm = serializers.CharField(source="target_hsm.name", read_only=True)
    threshold = serializers.IntegerField(source="ceremony.threshold", read_only=True)
    shares_entered = serializers.SerializerMethodField()
    kcv = serializers.CharField(source="backup.kcv", read_only=True)

    class Meta:
        model = Restore
        fields = [
            "id",
            "backup",
            "key",
            "version",
            "kcv",
            "ceremony",
            "hsm",
            "state",
            "threshold",
            "shares_entered",
            "collect_until",
            "created_at",
            "finished_at",
            "restored_kcv",
            "error",
            "request",
            "job",
        ]
        read_only_fields = fields

    def get_shares_entered(self, obj: Restore) -> list[dict[str, Any]]:
        return [
            {"index": s.share.index, "custodian": s.custodian.username, "entered_at": s.entered_at}
            for s in obj.entered_shares.all()
        ]


class ExportSerializer(serializers.ModelSerializer):
    key = serializers.UUIDField(source="version.key_id", read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)

    class Meta:
        model = Export
        fields = [
            "id",
            "key",
            "version",
            "kcv",
            "recipient",
            "recipient_fingerprint",
            "created_at",
            "downloaded_at",
            "request",
        ]
        read_only_fields = fields


class ExportPayloadSerializer(ExportSerializer):
    class Meta(ExportSerializer.Meta):
        fields = [*ExportSerializer.Meta.fields, "encrypted_transport_key", "wrapped_key"]
        read_only_fields = fields


class EscrowInput(serializers.Serializer):
    kek = serializers.UUIDField(help_text="The key to escrow as the backup KEK (AES-256, wrap_unwrap).")
    custodians = serializers.ListField(child=serializers.CharField(max_length=150), min_length=2, max_length=10)
    threshold = serializers.IntegerField(min_value=2, max_value=10)
    justification = serializers.CharField(max_length=2000)


class ShareInput(serializers.Serializer):
    share = serializers.CharField(max_length=400, help_text="The whole share line, starting with kms-share:.")
    otp = serializers.CharField(max_length=12)


class ImportInput(serializers.Serializer):
    name = serializers.CharField(max_length=64)
    algorithm = serializers.CharField(max_length=16)
    usage = serializers.CharField(max_length=16)
    policy = serializers.CharField(max_length=64, required=False)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=50), required=False)
    activate_at = serializers.CharField(required=False, allow_null=True)
    hsm = serializers.CharField(max_length=64, required=False)
    encrypted_transport_key = serializers.CharField(
        max_length=8000, help_text="base64 of RSA-OAEP (SHA-256, MGF1-SHA-256) of your transport key"
    )
    wrapped_key = serializers.CharField(max_length=8000, help_text="base64 of AES key wrap (RFC 3394) of the key")
    expected_kcv = serializers.CharField(max_length=64, help_text="AES: first 3 bytes of AES-CMAC of a zero block")
    justification = serializers.CharField(max_length=2000)


class ImportKeySerializer(serializers.Serializer):
    hsm = serializers.CharField()
    algorithm = serializers.CharField()
    public_key_pem = serializers.CharField()
    fingerprint = serializers.CharField(help_text="SHA-256 of the public key (DER)")
    format = serializers.CharField()


# --- Views ----------------------------------------------------------------------------------------

KEY_PARAM = OpenApiParameter("key", str, description="Only the backups of this key (id).")


class BackupViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ApiViewSet):
    """Backups of key versions: where they are, their check values and when they were last verified."""

    serializer_class = BackupSerializer

    def get_queryset(self) -> QuerySet[Backup]:
        queryset = Backup.objects.select_related("version__key", "kek_version__key").order_by("-created_at", "id")
        if self.action == "list" and "key" in self.request.query_params:
            key_id = uuid_or_404(self.request.query_params["key"], "key")
            queryset = queryset.filter(version__key_id=key_id)
        return queryset

    def get_object(self) -> Backup:
        backup = self.get_queryset().filter(pk=uuid_or_404(self.kwargs["pk"], "backup")).first()
        if backup is None:
            raise NotFound("No such backup.")
        return backup

    @extend_schema(summary="List backups", parameters=[KEY_PARAM])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Show a backup")
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().retrieve(request, *args, **kwargs)


class EscrowViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ApiViewSet):
    """Escrow ceremonies of the backup KEK: who holds which share (fingerprints only)."""

    serializer_class = CeremonySerializer
    action_roles = {"create": frozenset({Role.KEY_ADMIN, Role.SECURITY_OFFICER})}

    def get_queryset(self) -> QuerySet[EscrowCeremony]:
        return (
            EscrowCeremony.objects.select_related("kek_version__key")
            .prefetch_related(Prefetch("shares", queryset=EscrowShare.objects.select_related("holder")))
            .order_by("-created_at", "id")
        )

    def get_object(self) -> EscrowCeremony:
        ceremony = self.get_queryset().filter(pk=uuid_or_404(self.kwargs["pk"], "ceremony")).first()
        if ceremony is None:
            raise NotFound("No such ceremony.")
        return ceremony

    @extend_schema(summary="List escrow ceremonies")
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Show an escrow ceremony")
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        summary="Request an escrow ceremony of the backup KEK (dual-controlled)",
        request=EscrowInput,
        responses={202: RequestDetailSerializer},
    )
    def create(self, request: Request) -> Response:
        body = EscrowInput(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        req = approvals.open_request(
            operation="escrow",
            requester=request.user,
            justification=data["justification"],
            target_id=str(data["kek"]),
            parameters={"custodians": data["custodians"], "threshold": data["threshold"]},
        )
        return Response(request_detail(req.pk), status=status.HTTP_202_ACCEPTED)


class RestoreViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ApiViewSet):
    """Restores: open one with `POST keys/{id}/restore/ {backup, hsm?, justification}`; once it is
    approved, custodians holding shares enter them here (with their TOTP code)."""

    serializer_class = RestoreSerializer
    action_scopes = {"shares": APPROVE}
    # Every role reaches the service, which refuses (and audits) anyone who is not an eligible custodian.
    action_roles = {"shares": frozenset(Role.values)}

    def get_queryset(self) -> QuerySet[Restore]:
        return (
            Restore.objects.select_related("backup__version", "target_hsm", "ceremony")
            .prefetch_related("entered_shares__share", "entered_shares__custodian")
            .order_by("-created_at", "id")
        )

    def get_object(self) -> Restore:
        restore = self.get_queryset().filter(pk=uuid_or_404(self.kwargs["pk"], "restore")).first()
        if restore is None:
            raise NotFound("No such restore.")
        return restore

    @extend_schema(summary="List restores")
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Show a restore")
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        summary="Enter your share for a restore (custodians; with your TOTP code)",
        request=ShareInput,
        responses={200: RestoreSerializer},
    )
    @action(detail=True, methods=["post"])
    def shares(self, request: Request, pk: str | None = None) -> Response:
        restore_id = uuid_or_404(pk, "restore")
        body = ShareInput(data=request.data)
        body.is_valid(raise_exception=True)
        enter_share(
            restore_id=restore_id,
            user=request.user,
            share_text=body.validated_data["share"],
            otp=body.validated_data["otp"],
        )
        return Response(RestoreSerializer(self.get_queryset().get(pk=restore_id)).data)


class ExportViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ApiViewSet):
    """Exports of key versions to recipients. Open one with `POST keys/{id}/export/`."""

    serializer_class = ExportSerializer
    action_roles = {"download": KEY_ADMIN}

    def get_queryset(self) -> QuerySet[Export]:
        return Export.objects.select_related("version").order_by("-created_at", "id")

    def get_object(self) -> Export:
        export = self.get_queryset().filter(pk=uuid_or_404(self.kwargs["pk"], "export")).first()
        if export is None:
            raise NotFound("No such export.")
        return export

    @extend_schema(summary="List exports")
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Show an export (without its blobs)")
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(summary="Download the wrapped key (its requester only)", responses={200: ExportPayloadSerializer})
    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str | None = None) -> Response:
        export = export_for_download(export_id=uuid_or_404(pk, "export"), user=request.user)
        return Response(ExportPayloadSerializer(export).data)


class ImportViewSet(ApiViewSet):
    """Bring your own key: fetch the import key, wrap your key for it, and request the import."""

    action_scopes = {"import_key": READ, "create": REQUEST}
    action_roles = {"create": KEY_ADMIN}

    @extend_schema(
        summary="The HSM's import key (RSA): wrap a transport key for it with RSA-OAEP-SHA256",
        parameters=[OpenApiParameter("hsm", str, description="The HSM to import into (default: the default HSM).")],
        responses={200: ImportKeySerializer},
    )
    @action(detail=False, methods=["get"], url_path="import-key")
    def import_key(self, request: Request) -> Response:
        name = request.query_params.get("hsm")
        hsm = (
            Hsm.objects.filter(name=name, retired_at__isnull=True).first()
            if name
            else Hsm.objects.filter(is_default=True).first()
        )
        if hsm is None:
            raise ApplicationError("hsm: no such registered HSM", code="invalid", details={"hsm": ["No such HSM."]})
        return Response(import_key_info(hsm=hsm))

    @extend_schema(
        summary="Request the import of a wrapped key (dual-controlled; a custodian confirms its check value)",
        request=ImportInput,
        responses={202: RequestDetailSerializer},
    )
    def create(self, request: Request) -> Response:
        body = ImportInput(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        justification = data.pop("justification")
        req = approvals.open_request(
            operation="import", requester=request.user, justification=justification, parameters=data
        )
        return Response(request_detail(req.pk), status=status.HTTP_202_ACCEPTED)


router = SimpleRouter()
# The fixed prefixes come before `backups/{id}/`, whose pattern would otherwise swallow them.
router.register("backups/escrows", EscrowViewSet, basename="escrow")
router.register("backups/restores", RestoreViewSet, basename="restore")
router.register("backups/exports", ExportViewSet, basename="export")
router.register("backups/imports", ImportViewSet, basename="import")
router.register("backups", BackupViewSet, basename="backup")

urlpatterns = [*router.urls]
