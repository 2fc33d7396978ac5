"""Backups of key versions, the split-knowledge escrow of the backup KEK, restores and exports (SPEC §7).

Nothing here holds plaintext key material:
- `Backup.wrapped` is a version wrapped under a backup KEK inside the HSM (AES key wrap, RFC 3394).
- `EscrowCeremony.wrapped_kek` is the backup KEK wrapped under a recovery key that exists only as
  M-of-N Shamir shares held by custodians.
- `EscrowShare.sealed` / `RestoreShare.sealed` hold a share encrypted (AES-GCM) under a
  non-extractable envelope key of an HSM, and only until it is handed off or used; afterwards only
  the share's fingerprint remains.
- `Export` holds a version wrapped for a recipient's RSA key, readable only with the recipient's
  private key.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Backup(models.Model):
    """One key version wrapped under one version of the backup KEK.

    Made by an approved `backup` request's job. `verified_at` is the last time a restore test into a
    session object gave back the recorded key check value; a failed test sets `verify_failed_at`.
    Destroying the key (or version) wipes `wrapped` and sets `destroyed_at`; the row stays as evidence.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.ForeignKey("lifecycle.KeyVersion", on_delete=models.PROTECT, related_name="backups")
    kek_version = models.ForeignKey("lifecycle.KeyVersion", on_delete=models.PROTECT, related_name="+")
    wrapped = models.TextField(blank=True)  # base64; emptied when the backup is destroyed
    kcv = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    verified_at = models.DateTimeField(null=True, blank=True)
    verify_failed_at = models.DateTimeField(null=True, blank=True)
    verify_error = models.TextField(blank=True)
    destroyed_at = models.DateTimeField(null=True, blank=True)
    job = models.ForeignKey("lifecycle.Job", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    request = models.ForeignKey(
        "approvals.ApprovalRequest", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # A second live copy under the same KEK adds nothing but another blob to protect.
            models.UniqueConstraint(
                fields=["version", "kek_version"],
                condition=models.Q(destroyed_at__isnull=True),
                name="lifecycle_backup_one_live_per_kek",
            ),
        ]
        indexes = [
            # The verification beat samples live backups, least recently verified first.
            models.Index(fields=["destroyed_at", "verified_at"], name="lifecycle_backup_verify_idx"),
        ]

    def __str__(self) -> str:
        return f"backup {str(self.id)[:8]} of {self.version}"

    @property
    def is_live(self) -> bool:
        return self.destroyed_at is None

    @property
    def verification_failing(self) -> bool:
        """The latest restore test failed (no success since)."""
        if self.verify_failed_at is None:
            return False
        return self.verified_at is None or self.verify_failed_at > self.verified_at


class CeremonyState(models.TextChoices):
    PENDING = "pending", "Waiting for the HSM"
    DISTRIBUTING = "distributing", "Shares being handed off"
    COMPLETE = "complete", "Every share handed off"
    SUPERSEDED = "superseded", "Superseded"
    DESTROYED = "destroyed", "Destroyed with the KEK"


LIVE_CEREMONY_STATES = (CeremonyState.DISTRIBUTING, CeremonyState.COMPLETE)


class EscrowCeremony(models.Model):
    """The backup KEK (one version of it) wrapped under a fresh recovery key split M-of-N.

    The key whose primary version has a live ceremony is the backup KEK. States:
    pending -> distributing -> complete; distributing|complete -> superseded (a newer ceremony for
    the same KEK version; its wrapped KEK is wiped, so old shares open nothing) or destroyed (the KEK
    was destroyed). `recovery_fingerprint` is SHA-256 over the recovery key: it lets a restore
    check the recombined key without storing it.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kek_version = models.ForeignKey("lifecycle.KeyVersion", on_delete=models.PROTECT, related_name="escrows")
    threshold = models.PositiveSmallIntegerField()
    share_count = models.PositiveSmallIntegerField()
    state = models.CharField(max_length=16, choices=CeremonyState.choices, default=CeremonyState.PENDING)
    wrapped_kek = models.TextField(blank=True)  # base64
    recovery_fingerprint = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField()
    distributed_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    job = models.ForeignKey("lifecycle.Job", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    request = models.ForeignKey(
        "approvals.ApprovalRequest", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(threshold__gte=2) & models.Q(share_count__gte=models.F("threshold")),
                name="lifecycle_escrow_threshold_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"escrow {str(self.id)[:8]} ({self.threshold} of {self.share_count})"

    @property
    def is_live(self) -> bool:
        return self.state in LIVE_CEREMONY_STATES


class EscrowShare(models.Model):
    """Who holds share number `index` of a ceremony, and when they took it (once).

    `sealed` holds the share encrypted under the KEK HSM's envelope key until its holder retrieves
    it; retrieval empties it. The console keeps only `fingerprint` (SHA-256 of the share) after that.
    """

    ceremony = models.ForeignKey(EscrowCeremony, on_delete=models.PROTECT, related_name="shares")
    index = models.PositiveSmallIntegerField()
    holder = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="escrow_shares")
    fingerprint = models.CharField(max_length=64, blank=True)
    sealed = models.TextField(blank=True)
    retrieved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["ceremony", "index"]
        constraints = [
            models.UniqueConstraint(fields=["ceremony", "index"], name="lifecycle_share_unique_index"),
            models.UniqueConstraint(fields=["ceremony", "holder"], name="lifecycle_share_one_per_holder"),
        ]

    def __str__(self) -> str:
        return f"share {self.index} of {self.ceremony}"


class RestoreState(models.TextChoices):
    COLLECTING = "collecting", "Collecting shares"
    RESTORING = "restoring", "Restoring on the HSM"
    RESTORED = "restored", "Restored"
    FAILED = "failed", "Failed"
    EXPIRED = "expired", "Share window closed"


class Restore(models.Model):
    """A restore of one backup after its request was approved: custodians enter shares, then a job runs.

    collecting -> restoring (the M-th share came in; the job is queued) -> restored | failed;
    collecting -> expired (the window closed first). Entered shares are wiped whenever it ends.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    backup = models.ForeignKey(Backup, on_delete=models.PROTECT, related_name="restores")
    ceremony = models.ForeignKey(EscrowCeremony, on_delete=models.PROTECT, related_name="restores")
    target_hsm = models.ForeignKey("lifecycle.Hsm", on_delete=models.PROTECT, related_name="+")
    request = models.ForeignKey("approvals.ApprovalRequest", on_delete=models.PROTECT, related_name="+")
    job = models.ForeignKey("lifecycle.Job", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    state = models.CharField(max_length=16, choices=RestoreState.choices, default=RestoreState.COLLECTING)
    collect_until = models.DateTimeField()
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    restored_kcv = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The expiry sweep reads collecting restores by deadline.
            models.Index(fields=["state", "collect_until"], name="lifecycle_restore_window_idx"),
        ]

    def __str__(self) -> str:
        return f"restore {str(self.id)[:8]} ({self.state})"


class RestoreShare(models.Model):
    """A share a custodian entered for a restore, sealed under the target HSM's envelope key until used."""

    restore = models.ForeignKey(Restore, on_delete=models.PROTECT, related_name="entered_shares")
    share = models.ForeignKey(EscrowShare, on_delete=models.PROTECT, related_name="+")
    custodian = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    sealed = models.TextField(blank=True)
    entered_at = models.DateTimeField()

    class Meta:
        ordering = ["entered_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["restore", "share"], name="lifecycle_restoreshare_once"),
            models.UniqueConstraint(fields=["restore", "custodian"], name="lifecycle_restoreshare_one_each"),
        ]

    def __str__(self) -> str:
        return f"share {self.share.index} for {self.restore}"


class Export(models.Model):
    """A version wrapped for a recipient: RSA-OAEP(SHA-256) of a transport key, and the key under it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.ForeignKey("lifecycle.KeyVersion", on_delete=models.PROTECT, related_name="exports")
    recipient = models.CharField(max_length=200)
    recipient_fingerprint = models.CharField(max_length=64)  # SHA-256 of the public key (DER)
    recipient_public_key_pem = models.TextField()
    encrypted_transport_key = models.TextField()  # base64
    wrapped_key = models.TextField()  # base64
    kcv = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    downloaded_at = models.DateTimeField(null=True, blank=True)
    job = models.ForeignKey("lifecycle.Job", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    request = models.ForeignKey("approvals.ApprovalRequest", on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"export of {self.version} to {self.recipient}"
