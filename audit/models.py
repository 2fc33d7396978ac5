from __future__ import annotations

from django.db import models

GENESIS_HASH = "0" * 64


class AuditEvent(models.Model):
    """One entry of the append-only, hash-chained audit trail.

    `hash` = SHA-256 over `prev_hash`, a newline and the canonical JSON of the other fields
    (`audit.chain.event_payload`). The database refuses UPDATE and DELETE on this table.
    """

    seq = models.BigIntegerField(primary_key=True)
    at = models.DateTimeField()
    actor = models.CharField(max_length=150)  # username at the time, or "system"
    actor_id = models.BigIntegerField(null=True, blank=True)
    via = models.CharField(max_length=16)  # web, api, cli, worker, beat, system
    source = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=32, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["seq"]
        indexes = [
            # The key and request pages show "everything that happened to this object".
            models.Index(fields=["target_type", "target_id", "seq"], name="audit_target_idx"),
            models.Index(fields=["action", "seq"], name="audit_action_idx"),
            models.Index(fields=["actor", "seq"], name="audit_actor_idx"),
            models.Index(fields=["at"], name="audit_at_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} by {self.actor}"


class ChainHead(models.Model):
    """The single row (pk=1) holding the last sequence number and hash.

    Appending locks this row first (SELECT … FOR UPDATE), which serialises writers on PostgreSQL
    and gives contiguous sequence numbers without gaps; SQLite serialises writers anyway.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64, default=GENESIS_HASH)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="audit_chainhead_singleton")]

    def __str__(self) -> str:
        return f"head #{self.seq}"


class Checkpoint(models.Model):
    """A signature by the HSM's audit signing key over (seq, head hash, time).

    Someone who can rewrite the database but cannot use the HSM cannot make one, so the chain up to
    the last checkpoint cannot be rewritten unnoticed. Append-only like the events.
    """

    seq = models.BigIntegerField()
    head_hash = models.CharField(max_length=64)
    signed_at = models.DateTimeField()
    algorithm = models.CharField(max_length=32, default="ECDSA-P256-SHA256")
    key_id = models.CharField(max_length=64)  # CKA_ID (hex) of the signing key
    signature = models.TextField()  # hex of the DER signature

    class Meta:
        ordering = ["seq", "id"]
        indexes = [models.Index(fields=["seq"], name="audit_checkpoint_seq_idx")]

    def __str__(self) -> str:
        return f"checkpoint at #{self.seq}"
