"""Serializers of the lifecycle API. Output shapes are read-only; inputs are small shape checks.

Keys never get a writable ModelSerializer: every change to a key is an approval request, validated
by the operation's `prepare` in `lifecycle.actions`.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from lifecycle.hsm.base import (
    ALGORITHMS,
    USAGE_ENCRYPT_DECRYPT,
    USAGE_MAC,
    USAGE_SIGN_VERIFY,
    USAGE_WRAP_UNWRAP,
)
from lifecycle.models import DestructionCertificate, Hsm, Job, Key, KeyGrant, KeyVersion, Policy, PolicyVersion
from lifecycle.models.policies import BackupRule
from lifecycle.policies import QUORUM_OPERATIONS
from lifecycle.services import key_use
from lifecycle.usage import PROCESS, PROTECT

from .fields import Base64Field

ALGORITHM_CHOICES = sorted(ALGORITHMS)  # named AlgorithmEnum in the OpenAPI document (settings)
USAGES = [USAGE_ENCRYPT_DECRYPT, USAGE_SIGN_VERIFY, USAGE_WRAP_UNWRAP, USAGE_MAC]
USE_OPERATIONS = sorted(PROTECT | PROCESS)
MAX_VERSION = 999_999_999  # what a ciphertext can name (kms:v<up to 9 digits>); keeps lookups in integer range
JUSTIFICATION_HELP = "Why this step is needed; approvers read it, and it is kept with the key's history."


# --- Keys and versions ----------------------------------------------------------------------------


class VersionBackupSerializer(serializers.Serializer):
    """A backup of a version (lifecycle.backups): where it stands, never its blob."""

    id = serializers.UUIDField()
    created_at = serializers.DateTimeField()
    kcv = serializers.CharField()
    verified_at = serializers.DateTimeField(allow_null=True)
    destroyed_at = serializers.DateTimeField(allow_null=True)


class VersionSerializer(serializers.ModelSerializer):
    """One version of a key: its HSM object (CKA_ID), key check value, state and periods.

    `is_primary` reads `primary_version_id` from the context when the view gives it, so a list of
    versions needs no query per row.
    """

    hsm_object_id = serializers.CharField(source="cka_id", help_text="The HSM object's CKA_ID, hex")
    kcv = serializers.CharField(help_text="Key check value, hex (empty until the HSM made the object)")
    hsm = serializers.CharField(source="hsm.name")
    public_key_pem = serializers.SerializerMethodField()
    is_primary = serializers.SerializerMethodField()
    backups = VersionBackupSerializer(many=True, read_only=True, help_text="Backups of this version (prefetched)")

    class Meta:
        model = KeyVersion
        fields = [
            "number",
            "state",
            "is_primary",
            "kcv",
            "hsm_object_id",
            "hsm",
            "public_key_pem",
            "extractable",
            "created_at",
            "generated_at",
            "activated_at",
            "originator_until",
            "recipient_until",
            "suspended_at",
            "deactivated_at",
            "compromised_at",
            "destroy_after",
            "destroyed_at",
            "backups",
        ]
        read_only_fields = fields

    def get_public_key_pem(self, obj: KeyVersion) -> str | None:
        """The public half (PEM, SubjectPublicKeyInfo) of an asymmetric version; null for symmetric keys."""
        return obj.public_key_pem or None

    def get_is_primary(self, obj: KeyVersion) -> bool:
        primary_id = self.context.get("primary_version_id", "unknown")
        if primary_id == "unknown":
            primary_id = Key.objects.filter(pk=obj.key_id).values_list("primary_version_id", flat=True).first()
        return primary_id == obj.pk


class CertificateSerializer(serializers.ModelSerializer):
    body = serializers.JSONField(help_text="What was destroyed, when, by whose approval, and how it was confirmed")

    class Meta:
        model = DestructionCertificate
        fields = ["id", "issued_at", "digest", "body"]
        read_only_fields = fields


class GrantSerializer(serializers.ModelSerializer):
    grantee = serializers.CharField(source="grantee.username")
    operations = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = KeyGrant
        fields = ["id", "grantee", "operations", "created_at", "request"]
        read_only_fields = fields


class KeySerializer(serializers.ModelSerializer):
    """A key's metadata (the material never leaves the HSM). Reads policy, hsm, owner and the
    primary version through select_related (`lifecycle.api.keys.key_queryset`)."""

    policy = serializers.CharField(source="policy.name")
    hsm = serializers.CharField(source="hsm.name")
    owner = serializers.CharField(source="owner.username")
    tags = serializers.ListField(child=serializers.CharField())
    primary_version = serializers.IntegerField(
        source="primary_version.number", allow_null=True, help_text="The number of the primary version"
    )

    class Meta:
        model = Key
        fields = [
            "id",
            "name",
            "description",
            "algorithm",
            "usage",
            "state",
            "state_changed_at",
            "policy",
            "hsm",
            "owner",
            "tags",
            "primary_version",
            "activate_at",
            "created_at",
            "destroy_after",
            "destroyed_at",
            "process_exception_until",
            "created_by_request",
        ]
        read_only_fields = fields


class KeyDetailSerializer(KeySerializer):
    """A key with its versions, live grants and (once destroyed) its certificate of destruction."""

    versions = serializers.SerializerMethodField()
    grants = serializers.SerializerMethodField()
    destruction_certificate = serializers.SerializerMethodField()

    class Meta(KeySerializer.Meta):
        fields = [*KeySerializer.Meta.fields, "versions", "grants", "destruction_certificate"]
        read_only_fields = fields

    @extend_schema_field(VersionSerializer(many=True))
    def get_versions(self, obj: Key) -> list[dict[str, Any]]:
        versions = sorted(obj.versions.all(), key=lambda v: v.number)  # prefetched
        return VersionSerializer(versions, many=True, context={"primary_version_id": obj.primary_version_id}).data

    @extend_schema_field(GrantSerializer(many=True))
    def get_grants(self, obj: Key) -> list[dict[str, Any]]:
        live = [grant for grant in obj.grants.all() if grant.revoked_at is None]  # prefetched
        return GrantSerializer(live, many=True).data

    @extend_schema_field(CertificateSerializer(allow_null=True))
    def get_destruction_certificate(self, obj: Key) -> dict[str, Any] | None:
        try:
            certificate = obj.destruction_certificate
        except DestructionCertificate.DoesNotExist:
            return None
        return CertificateSerializer(certificate).data


class DecisionEntrySerializer(serializers.Serializer):
    approver = serializers.CharField()
    decision = serializers.CharField()
    decided_at = serializers.DateTimeField()
    comment = serializers.CharField()


class TimelineRequestSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    operation = serializers.CharField()
    requester = serializers.CharField()
    justification = serializers.CharField()
    state = serializers.CharField()
    digest = serializers.CharField()


class TimelineEntrySerializer(serializers.Serializer):
    """One entry of the key's history, with the request and approvals behind it.

    `kind` says which: `transition`, a state change of the key (version null) or of a version;
    `step`, a dual-controlled step that changes no state (destruction scheduled or cancelled, rotation
    started, a grant, a processing exception, a revocation notice, a backup, an export; `action`
    names it, `from_state` and `nist_transition` are null and `to_state` is ""); `review`, the
    decided mandatory review of an immediate suspend or compromise (`outcome`, and `reviewed`, the
    request it reviewed). `summary` says in one sentence what happened (empty for transitions).
    """

    kind = serializers.ChoiceField(choices=["transition", "step", "review"])
    action = serializers.CharField(help_text="The step's audit action (e.g. key.destruction_scheduled); '' otherwise")
    summary = serializers.CharField(help_text="One sentence for a step or review; '' for a transition")
    outcome = serializers.CharField(
        help_text="For a review: confirmed, disputed, expired, cancelled or failed; '' otherwise"
    )
    reviewed = serializers.UUIDField(allow_null=True, help_text="For a review: the request it reviewed")
    at = serializers.DateTimeField()
    version = serializers.IntegerField(allow_null=True)
    from_state = serializers.CharField(allow_null=True)
    to_state = serializers.CharField()
    nist_transition = serializers.IntegerField(allow_null=True, help_text="Transition number of SP 800-57 Figure 3")
    actor = serializers.CharField(help_text="Username, or 'system' for the worker and the scheduler")
    reason = serializers.CharField()
    request = TimelineRequestSerializer(allow_null=True)
    decisions = DecisionEntrySerializer(many=True)
    job = serializers.UUIDField(allow_null=True)

    def to_representation(self, entry: Any) -> dict[str, Any]:
        request = entry.request
        return super().to_representation(
            {
                "kind": entry.kind,
                "action": entry.action,
                "summary": entry.summary,
                "outcome": entry.outcome,
                "reviewed": entry.reviewed.pk if entry.reviewed is not None else None,
                "at": entry.at,
                "version": entry.version,
                "from_state": entry.from_state,
                "to_state": entry.to_state,
                "nist_transition": entry.nist_transition,
                "actor": entry.actor,
                "reason": entry.reason,
                "request": {
                    "id": request.pk,
                    "operation": request.operation,
                    "requester": request.requester.get_username(),
                    "justification": request.justification,
                    "state": request.state,
                    "digest": request.digest,
                }
                if request is not None
                else None,
                "decisions": [
                    {"approver": d.approver, "decision": d.decision, "decided_at": d.decided_at, "comment": d.comment}
                    for d in entry.decisions
                ],
                "job": entry.job.pk if entry.job is not None else None,
            }
        )


# --- Inputs: requests on keys ---------------------------------------------------------------------


class KeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=64, help_text="Unique; letters, digits, dots, dashes, underscores")
    algorithm = serializers.ChoiceField(choices=ALGORITHM_CHOICES)
    usage = serializers.ChoiceField(
        choices=USAGES, help_text="AES: encrypt_decrypt or wrap_unwrap; RSA/EC: sign_verify; HMAC: mac"
    )
    policy = serializers.CharField(max_length=64, required=False, help_text="Policy name (default: standard)")
    justification = serializers.CharField(max_length=2000, help_text=JUSTIFICATION_HELP)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=50), max_length=20, required=False)
    activate_at = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text="When the key becomes active once generated. Omitted: at once; null: stays in "
        "pre_activation until an explicit activate.",
    )
    hsm = serializers.CharField(max_length=64, required=False, help_text="HSM name (default: the default HSM)")

    def parameters(self) -> dict[str, Any]:
        """The generate operation's parameters: what the client sent, minus the justification.

        `activate_at` is passed only when it was sent (absent means "now", null means "never").
        """
        data = dict(self.validated_data)
        data.pop("justification")
        if data.get("activate_at") is not None:
            data["activate_at"] = data["activate_at"].isoformat()
        return data


class JustificationSerializer(serializers.Serializer):
    justification = serializers.CharField(max_length=2000, help_text=JUSTIFICATION_HELP)


class ProcessExceptionSerializer(JustificationSerializer):
    until = serializers.DateTimeField(help_text="End of the exception: within the next 30 days")


class GrantRequestSerializer(JustificationSerializer):
    grantee = serializers.CharField(max_length=150, help_text="Username of a service account (role api_client)")
    operations = serializers.ListField(
        child=serializers.ChoiceField(choices=USE_OPERATIONS),
        max_length=len(USE_OPERATIONS),
        allow_empty=True,
        help_text="Operations to allow; an empty list revokes the grant",
    )


class OpenParametersSerializer(JustificationSerializer):
    """A justification plus the operation's own parameters (passed on to the operation as sent)."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        validated = super().to_internal_value(data)
        extra = {name: value for name, value in data.items() if name != "justification"}
        if _holds_nul(extra):
            # PostgreSQL refuses NUL in text and JSON: refuse it here, as DRF's CharField does.
            raise serializers.ValidationError({"non_field_errors": ["Null characters are not allowed."]})
        return {**extra, **validated}


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


# --- Inputs and outputs: key use ------------------------------------------------------------------


class EncryptSerializer(serializers.Serializer):
    plaintext = Base64Field(max_bytes=key_use.MAX_DATA_BYTES, help_text="Base64; at most 64 KiB decoded")
    aad = Base64Field(
        max_bytes=key_use.MAX_AAD_BYTES, required=False, help_text="Additional authenticated data, base64"
    )


class EncryptResultSerializer(serializers.Serializer):
    ciphertext = serializers.CharField(help_text="kms:v<N>:<base64 of 96-bit nonce ‖ ciphertext ‖ 128-bit tag>")
    key_version = serializers.IntegerField()


class DecryptSerializer(serializers.Serializer):
    ciphertext = serializers.CharField(
        max_length=4 * ((key_use.MAX_DATA_BYTES + 28 + 2) // 3) + 20, help_text="As encrypt returned it"
    )
    aad = Base64Field(max_bytes=key_use.MAX_AAD_BYTES, required=False, help_text="The AAD given to encrypt")


class DecryptResultSerializer(serializers.Serializer):
    plaintext = Base64Field(max_bytes=key_use.MAX_DATA_BYTES)
    key_version = serializers.IntegerField()


class MessageSerializer(serializers.Serializer):
    message = Base64Field(max_bytes=key_use.MAX_DATA_BYTES, help_text="Base64; at most 64 KiB decoded")


class SignResultSerializer(serializers.Serializer):
    signature = Base64Field(
        max_bytes=key_use.MAX_SIGNATURE_BYTES, help_text="Base64; RSA-PSS SHA-256 (salt 32) or DER ECDSA"
    )
    key_version = serializers.IntegerField()


class VerifySerializer(MessageSerializer):
    signature = Base64Field(max_bytes=key_use.MAX_SIGNATURE_BYTES, allow_empty=False)
    key_version = serializers.IntegerField(
        min_value=1, max_value=MAX_VERSION, required=False, allow_null=True, help_text="Default: the primary version"
    )


class MacResultSerializer(serializers.Serializer):
    mac = Base64Field(max_bytes=key_use.MAX_SIGNATURE_BYTES, help_text="HMAC-SHA256, base64")
    key_version = serializers.IntegerField()


class VerifyMacSerializer(MessageSerializer):
    mac = Base64Field(max_bytes=key_use.MAX_SIGNATURE_BYTES, allow_empty=False)
    key_version = serializers.IntegerField(
        min_value=1, max_value=MAX_VERSION, required=False, allow_null=True, help_text="Default: the primary version"
    )


class ValidResultSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    key_version = serializers.IntegerField()


# --- Jobs, HSMs, policies, custodians -------------------------------------------------------------


class JobSerializer(serializers.ModelSerializer):
    key = serializers.UUIDField(source="key_id", allow_null=True)
    version = serializers.IntegerField(source="version.number", allow_null=True)
    hsm = serializers.CharField(source="hsm.name", allow_null=True)
    request = serializers.UUIDField(source="request_id", allow_null=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "status",
            "key",
            "version",
            "hsm",
            "request",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
            "error",
            "result",
        ]
        read_only_fields = fields


class HealthSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    manufacturer = serializers.CharField()
    model = serializers.CharField()
    serial = serializers.CharField()
    firmware = serializers.CharField()
    object_count = serializers.IntegerField()
    error = serializers.CharField()


class HsmSerializer(serializers.ModelSerializer):
    """A registered token. `live_versions` counts key versions on it that are not destroyed."""

    live_versions = serializers.IntegerField()
    health = serializers.SerializerMethodField()

    class Meta:
        model = Hsm
        fields = [
            "id",
            "name",
            "module",
            "token_label",
            "location",
            "is_default",
            "registered_at",
            "retired_at",
            "live_versions",
            "health",
        ]
        read_only_fields = fields

    @extend_schema_field(HealthSerializer(allow_null=True))
    def get_health(self, obj: Hsm) -> dict[str, Any] | None:
        health = self.context.get("health", {}).get(obj.pk)
        if health is None:
            return None
        return HealthSerializer(health).data


class HsmChangeSerializer(JustificationSerializer):
    action = serializers.ChoiceField(choices=["register", "retire"], default="register")
    name = serializers.CharField(max_length=64)
    module = serializers.CharField(max_length=500, required=False, help_text="Absolute path of the PKCS#11 module")
    token_label = serializers.CharField(max_length=32, required=False)
    pin_env = serializers.CharField(
        max_length=64, required=False, allow_blank=True, help_text="Environment variable holding the PIN"
    )
    pin_file = serializers.CharField(
        max_length=500, required=False, allow_blank=True, help_text="File holding the PIN (absolute path)"
    )
    location = serializers.CharField(max_length=200, required=False, allow_blank=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # PINs never travel to the console; refuse them by name before anything else happens.
        if any(name in self.initial_data for name in ("pin", "so_pin", "user_pin")):
            raise serializers.ValidationError(
                {"pin": ["PINs are never sent to the console: give pin_env or pin_file instead."]}
            )
        return attrs


class QuorumRuleSerializer(serializers.Serializer):
    approvals = serializers.IntegerField(min_value=0, max_value=10, required=False)
    approver_roles = serializers.ListField(child=serializers.CharField(max_length=32), required=False, max_length=5)
    approve_within_hours = serializers.IntegerField(min_value=1, max_value=720, required=False)
    execute_within_hours = serializers.IntegerField(min_value=1, max_value=720, required=False)


class PolicySettingsSerializer(serializers.ModelSerializer):
    """The settings of one policy version (SPEC §5 field names)."""

    quorum = serializers.DictField(child=QuorumRuleSerializer(), help_text="Operation name -> rule")
    algorithms = serializers.ListField(child=serializers.CharField())
    version = serializers.IntegerField(source="number")
    request = serializers.UUIDField(source="request_id", allow_null=True)

    class Meta:
        model = PolicyVersion
        fields = [
            "version",
            "description",
            "algorithms",
            "originator_period_days",
            "recipient_period_days",
            "auto_rotate",
            "rotation_period_days",
            "destruction_wait_days",
            "backup",
            "exportable",
            "backup_private_keys",
            "quorum",
            "created_at",
            "request",
        ]
        read_only_fields = fields


class _CurrentSetting(serializers.Field):
    """One setting of the policy's current version, read from the prefetched versions."""

    def __init__(self, setting: str, **kwargs: Any) -> None:
        self.setting = setting
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, policy: Policy) -> Any:
        current = next((v for v in policy.versions.all() if v.is_current), None)  # prefetched
        if current is None:
            return None
        value = getattr(current, self.setting)
        return value.value if hasattr(value, "value") else value


@extend_schema_field(OpenApiTypes.INT)
class _IntSetting(_CurrentSetting):
    pass


@extend_schema_field(OpenApiTypes.BOOL)
class _BoolSetting(_CurrentSetting):
    pass


@extend_schema_field(OpenApiTypes.STR)
class _StrSetting(_CurrentSetting):
    pass


@extend_schema_field({"type": "array", "items": {"type": "string"}})
class _ListSetting(_CurrentSetting):
    pass


@extend_schema_field({"type": "object", "additionalProperties": {"$ref": "#/components/schemas/QuorumRule"}})
class _QuorumSetting(_CurrentSetting):
    pass


class PolicySerializer(serializers.ModelSerializer):
    """A policy with the settings of its current version at the top level under the SPEC §5 field
    names (as POST takes them), and the same settings again under `current` with the version's
    number, time and request."""

    current = serializers.SerializerMethodField()
    version = _IntSetting("number")
    description = _StrSetting("description")
    algorithms = _ListSetting("algorithms")
    originator_period_days = _IntSetting("originator_period_days", allow_null=True)
    recipient_period_days = _IntSetting("recipient_period_days", allow_null=True)
    auto_rotate = _BoolSetting("auto_rotate")
    rotation_period_days = _IntSetting("rotation_period_days", allow_null=True)
    destruction_wait_days = _IntSetting("destruction_wait_days")
    backup = _StrSetting("backup")
    exportable = _BoolSetting("exportable")
    backup_private_keys = _BoolSetting("backup_private_keys")
    quorum = _QuorumSetting("quorum")

    class Meta:
        model = Policy
        fields = [
            "id",
            "name",
            "created_at",
            "version",
            "description",
            "algorithms",
            "originator_period_days",
            "recipient_period_days",
            "auto_rotate",
            "rotation_period_days",
            "destruction_wait_days",
            "backup",
            "exportable",
            "backup_private_keys",
            "quorum",
            "current",
        ]
        read_only_fields = fields

    @extend_schema_field(PolicySettingsSerializer)
    def get_current(self, obj: Policy) -> dict[str, Any] | None:
        current = next((v for v in obj.versions.all() if v.is_current), None)  # prefetched
        return PolicySettingsSerializer(current).data if current else None


class PolicyDetailSerializer(PolicySerializer):
    versions = serializers.SerializerMethodField()

    class Meta(PolicySerializer.Meta):
        fields = [*PolicySerializer.Meta.fields, "versions"]
        read_only_fields = fields

    @extend_schema_field(PolicySettingsSerializer(many=True))
    def get_versions(self, obj: Policy) -> list[dict[str, Any]]:
        versions = sorted(obj.versions.all(), key=lambda v: -v.number)  # prefetched
        return PolicySettingsSerializer(versions, many=True).data


class PolicyChangeSerializer(JustificationSerializer):
    """A new policy, or a new version of one: fields left out keep the current (or standard) values."""

    name = serializers.CharField(max_length=64)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    algorithms = serializers.ListField(
        child=serializers.ChoiceField(choices=ALGORITHM_CHOICES), required=False, max_length=len(ALGORITHMS)
    )
    originator_period_days = serializers.IntegerField(min_value=1, max_value=3650, required=False, allow_null=True)
    recipient_period_days = serializers.IntegerField(min_value=1, max_value=7300, required=False, allow_null=True)
    auto_rotate = serializers.BooleanField(required=False)
    rotation_period_days = serializers.IntegerField(min_value=1, max_value=3650, required=False, allow_null=True)
    destruction_wait_days = serializers.IntegerField(min_value=0, max_value=90, required=False)
    backup = serializers.ChoiceField(choices=BackupRule.values, required=False)
    exportable = serializers.BooleanField(required=False)
    backup_private_keys = serializers.BooleanField(
        required=False, help_text="Allow backups of private signature keys (NIST SP 800-57 says not to by default)"
    )
    quorum = serializers.DictField(
        child=QuorumRuleSerializer(),
        required=False,
        help_text="Operation name -> rule; operations: " + ", ".join(QUORUM_OPERATIONS),
    )

    def parameters(self) -> dict[str, Any]:
        data = dict(self.validated_data)
        data.pop("justification")
        if "quorum" in data:
            data["quorum"] = {op: dict(rule) for op, rule in data["quorum"].items()}
        return data


class AcknowledgementStatusSerializer(serializers.Serializer):
    current = serializers.BooleanField(help_text="Acknowledged the current text within the last 12 months")
    acknowledged_at = serializers.DateTimeField(allow_null=True)


class CustodianSerializer(serializers.Serializer):
    """A user holding a role: roles, second factor, and (for custodians) the acknowledgement."""

    username = serializers.CharField()
    email = serializers.EmailField()
    is_active = serializers.BooleanField()
    roles = serializers.ListField(child=serializers.CharField())
    totp_confirmed = serializers.BooleanField()
    acknowledgement = AcknowledgementStatusSerializer(allow_null=True)
    last_login = serializers.DateTimeField(allow_null=True)


class RoleChangeSerializer(JustificationSerializer):
    roles = serializers.ListField(
        child=serializers.CharField(max_length=32), max_length=5, help_text="The complete new set of roles"
    )
