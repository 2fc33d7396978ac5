"""Output shapes of the audit API (it is read-only: nothing here writes)."""

from __future__ import annotations

from rest_framework import serializers

from audit.models import AuditEvent, Checkpoint


class AuditEventSerializer(serializers.ModelSerializer):
    """One event as recorded. `hash` and `prev_hash` let a client cross-check an offline export."""

    details = serializers.JSONField(help_text="A small JSON object; never a secret.")

    class Meta:
        model = AuditEvent
        fields = [
            "seq",
            "at",
            "actor",
            "via",
            "source",
            "action",
            "target_type",
            "target_id",
            "details",
            "prev_hash",
            "hash",
        ]
        read_only_fields = fields


class CheckpointSerializer(serializers.ModelSerializer):
    """A signature of the HSM's audit signing key over (seq, head hash, signed_at); hex DER."""

    class Meta:
        model = Checkpoint
        fields = ["seq", "head_hash", "signed_at", "algorithm", "key_id", "signature"]
        read_only_fields = fields


class VerifySerializer(serializers.Serializer):
    """The outcome of checking the whole chain and every checkpoint (SPEC §10, plus context)."""

    ok = serializers.BooleanField()
    checked = serializers.IntegerField(help_text="Events verified (up to the first broken one).")
    head = serializers.CharField(help_text="Hash of the last verified event.")
    head_seq = serializers.IntegerField(help_text="Sequence number of the last verified event.")
    first_bad_seq = serializers.IntegerField(
        required=False, help_text="Only when ok is false: the first sequence number that cannot be trusted."
    )
    reason = serializers.CharField(required=False, help_text="Only when ok is false: what is wrong there.")
    checkpoints_checked = serializers.IntegerField(help_text="Checkpoints whose signature verified.")
    last_checkpoint_seq = serializers.IntegerField(
        allow_null=True, help_text="The last checkpoint that verified and matches the chain."
    )
    last_checkpoint_at = serializers.DateTimeField(allow_null=True)
    unsigned_events = serializers.IntegerField(help_text="Verified events after the last checkpoint.")
    summary = serializers.CharField(help_text="The one-line summary `kms_audit verify` prints.")
