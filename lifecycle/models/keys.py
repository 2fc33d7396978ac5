from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from audit.locking import TrailOrderedManager
from lifecycle.states import KeyState


class Key(models.Model):
    """A managed key: metadata only. Its material lives in the HSM as one object (pair) per version.

    `state` follows NIST SP 800-57 (lifecycle.states). While `destroy_after` is set the key is
    waiting for destruction: nothing may use it and the schedule can still be cancelled. A
    destroyed key keeps its metadata, its versions and its certificate of destruction.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    algorithm = models.CharField(max_length=16)
    usage = models.CharField(max_length=16)
    policy = models.ForeignKey("lifecycle.Policy", on_delete=models.PROTECT, related_name="keys")
    hsm = models.ForeignKey("lifecycle.Hsm", on_delete=models.PROTECT, related_name="keys")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_keys")
    tags = models.JSONField(default=list, blank=True)
    state = models.CharField(max_length=16, choices=KeyState.choices, default=KeyState.PRE_ACTIVATION)
    state_changed_at = models.DateTimeField()
    primary_version = models.ForeignKey(
        "lifecycle.KeyVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    activate_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    destroy_after = models.DateTimeField(null=True, blank=True)
    destruction_request = models.ForeignKey(
        "approvals.ApprovalRequest", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    destroyed_at = models.DateTimeField(null=True, blank=True)
    # A compromised key may decrypt/verify only inside an approved, time-boxed exception.
    process_exception_until = models.DateTimeField(null=True, blank=True)
    created_by_request = models.ForeignKey(
        "approvals.ApprovalRequest", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    class Meta:
        ordering = ["name"]
        indexes = [
            models.Index(fields=["state", "name"], name="lifecycle_key_state_idx"),
            # The sweep finds keys to activate and destructions that are due.
            models.Index(
                fields=["activate_at"], condition=models.Q(state="pre_activation"), name="lifecycle_key_activate_idx"
            ),
            models.Index(
                fields=["destroy_after"],
                condition=models.Q(destroy_after__isnull=False),
                name="lifecycle_key_destroy_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(state__in=KeyState.values), name="lifecycle_key_state_valid"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_asymmetric(self) -> bool:
        return self.algorithm.startswith(("RSA", "EC"))


class KeyVersion(models.Model):
    """One generation of a key's material: an HSM object (pair) named by a random CKA_ID.

    The CKA_ID is chosen before the worker runs and stored here first, so a re-run finds the object
    it already made instead of making a second one. `generated_at` is empty until the HSM object
    exists. Periods are fixed at activation from the policy: the version may protect (encrypt, sign,
    mac) until `originator_until` and process (decrypt, verify) until `recipient_until`.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    key = models.ForeignKey(Key, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=KeyState.choices, default=KeyState.PRE_ACTIVATION)
    hsm = models.ForeignKey("lifecycle.Hsm", on_delete=models.PROTECT, related_name="versions")
    cka_id = models.CharField(max_length=64, unique=True)  # hex
    kcv = models.CharField(max_length=64, blank=True)
    public_key_pem = models.TextField(blank=True)
    extractable = models.BooleanField(default=False)
    created_at = models.DateTimeField()
    generated_at = models.DateTimeField(null=True, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    originator_until = models.DateTimeField(null=True, blank=True)
    recipient_until = models.DateTimeField(null=True, blank=True)
    suspended_at = models.DateTimeField(null=True, blank=True)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    compromised_at = models.DateTimeField(null=True, blank=True)
    destroy_after = models.DateTimeField(null=True, blank=True)
    destroyed_at = models.DateTimeField(null=True, blank=True)

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    class Meta:
        ordering = ["key", "number"]
        constraints = [
            models.UniqueConstraint(fields=["key", "number"], name="lifecycle_keyversion_unique_number"),
            models.CheckConstraint(
                condition=models.Q(state__in=KeyState.values), name="lifecycle_keyversion_state_valid"
            ),
        ]
        indexes = [
            # The cryptoperiod sweep reads active versions by the end of their originator period.
            models.Index(fields=["state", "originator_until"], name="lifecycle_version_period_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.key.name} v{self.number}"

    @property
    def cka_id_bytes(self) -> bytes:
        return bytes.fromhex(self.cka_id)


class KeyTransition(models.Model):
    """A state change of a key or one of its versions: who, when, why, and through which request."""

    key = models.ForeignKey(Key, on_delete=models.PROTECT, related_name="transitions")
    version = models.ForeignKey(KeyVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="transitions")
    from_state = models.CharField(max_length=16, blank=True)
    to_state = models.CharField(max_length=16)
    nist_transition = models.PositiveSmallIntegerField(null=True, blank=True)
    at = models.DateTimeField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    actor_name = models.CharField(max_length=150)
    reason = models.TextField(blank=True)
    request = models.ForeignKey(
        "approvals.ApprovalRequest", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    job = models.ForeignKey("lifecycle.Job", on_delete=models.PROTECT, null=True, blank=True, related_name="+")

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["key", "at"], name="lifecycle_transition_key_idx")]

    def __str__(self) -> str:
        target = f"{self.key.name} v{self.version.number}" if self.version_id else self.key.name
        return f"{target}: {self.from_state or '-'} -> {self.to_state}"


class DestructionCertificate(models.Model):
    """Evidence that a key's HSM objects (and backups) were destroyed and confirmed gone."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    key = models.OneToOneField(Key, on_delete=models.PROTECT, related_name="destruction_certificate")
    issued_at = models.DateTimeField()
    body = models.JSONField()
    digest = models.CharField(max_length=64)  # SHA-256 of the canonical JSON of body

    def __str__(self) -> str:
        return f"certificate of destruction for {self.key.name}"


class KeyGrant(models.Model):
    """Use of a key granted to a service account (api_client) for some operations."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    key = models.ForeignKey(Key, on_delete=models.PROTECT, related_name="grants")
    grantee = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="key_grants")
    operations = models.JSONField(default=list)
    created_at = models.DateTimeField()
    request = models.ForeignKey(
        "approvals.ApprovalRequest", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["key", "grantee"], condition=models.Q(revoked_at__isnull=True), name="lifecycle_grant_one_live"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.grantee} may {','.join(self.operations)} with {self.key}"


class KeyUsage(models.Model):
    """How often a version was used, per client, operation and day (counted on the hot path)."""

    version = models.ForeignKey(KeyVersion, on_delete=models.PROTECT, related_name="usage_counts")
    client = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    operation = models.CharField(max_length=16)
    day = models.DateField()
    count = models.PositiveBigIntegerField(default=0)

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["version", "client", "operation", "day"], name="lifecycle_usage_unique_bucket"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.version} {self.operation} x{self.count} on {self.day}"
