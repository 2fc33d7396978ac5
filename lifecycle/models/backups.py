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
- `VersionCopy` names an HSM besides `KeyVersion.hsm` that holds (or may hold) a version's
  material, so that destruction reaches every copy and an HSM holding one is not retired.

Every model's default manager is `TrailOrderedManager`: a row lock takes the audit chain head
first, the one lock order of the console (audit.locking), so these rows cannot deadlock with a
transaction that recorded an event first.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from audit.locking import TrailOrderedManager


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

    objects = TrailOrderedManager()  # row locks take the audit chain head first

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
    FAILED = "failed", "Failed: shares not taken in time"


LIVE_CEREMONY_STATES = (CeremonyState.DISTRIBUTING, CeremonyState.COMPLETE)


class EscrowCeremony(models.Model):
    """The backup KEK (one version of it) wrapped under a fresh recovery key split M-of-N.

    The key whose primary version has a live ceremony is the backup KEK. States:
    pending -> distributing -> complete; distributing|complete -> superseded (a newer ceremony of the
    same KEK became complete; its wrapped KEK is wiped, so old shares open nothing) or destroyed (the KEK
    was destroyed); distributing -> failed (a share was not taken by `retrieve_by`: the shares still
    sealed and the wrapped KEK are wiped, and a new ceremony is needed). `recovery_fingerprint` is
    SHA-256 over the recovery key: it lets a restore check the recombined key without storing it.
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
    # Every holder must take their share before this (set when the shares are sealed); past it the
    # shares still sealed are wiped and the ceremony fails, so no one who holds the database and the
    # HSM PIN can unseal them at leisure.
    retrieve_by = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    job = models.ForeignKey("lifecycle.Job", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    request = models.ForeignKey(
        "approvals.ApprovalRequest", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The expiry sweep reads distributing ceremonies by their hand-off deadline.
            models.Index(fields=["state", "retrieve_by"], name="lifecycle_escrow_deadline_idx"),
        ]
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

    objects = TrailOrderedManager()  # row locks take the audit chain head first

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

    objects = TrailOrderedManager()  # row locks take the audit chain head first

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

    objects = TrailOrderedManager()  # row locks take the audit chain head first

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

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"export of {self.version} to {self.recipient}"


class CopyEnd(models.TextChoices):
    DESTROYED = "destroyed", "Destroyed and confirmed absent"
    PRIMARY = "primary", "The version lives there again"


class VersionCopy(models.Model):
    """An HSM other than `version.hsm` that holds, or may hold, a copy of the version's material.

    A restore into another HSM moves the version there (`version.hsm`); the HSM it came from keeps
    its object unless the restore found it gone, and is recorded here. Destruction destroys the
    version on `version.hsm` and on every live copy's HSM, confirms absence on each and lists them
    all in the certificate (which ends the copy: `ended_at`, `end` = destroyed); an HSM with a live
    copy cannot be retired. A later restore back into that HSM ends the copy (`end` = primary).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.ForeignKey("lifecycle.KeyVersion", on_delete=models.PROTECT, related_name="copies")
    hsm = models.ForeignKey("lifecycle.Hsm", on_delete=models.PROTECT, related_name="version_copies")
    restore = models.ForeignKey(Restore, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    # What the restore saw on that HSM: True (the object was there), None (the HSM could not be asked).
    seen_present = models.BooleanField(null=True)
    recorded_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    end = models.CharField(max_length=16, choices=CopyEnd.choices, blank=True)

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    class Meta:
        ordering = ["recorded_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["version", "hsm"],
                condition=models.Q(ended_at__isnull=True),
                name="lifecycle_versioncopy_one_live",
            ),
        ]

    def __str__(self) -> str:
        return f"copy of {self.version_id} on {self.hsm_id}"

    @property
    def is_live(self) -> bool:
        return self.ended_at is None
