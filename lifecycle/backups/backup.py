"""Backups of key versions: the policy and NIST rules, the backup job's record, and restore tests.

Backups follow the policy (`backup`: required, allowed, forbidden) and NIST SP 800-57 Part 1
Table 5: private signature keys (every RSA/EC key here is a sign_verify key) are not backed up
unless the policy sets `backup_private_keys`. Every backup is made under the current escrowed KEK
(lifecycle.backups.escrow) on the HSM that holds the version.

A restore test unwraps a backup into a session object and compares key check values: for a secret
key the HSM computes it from the unwrapped key; for a private key it is the SHA-256 of the public key
that the unwrapped private key proved to match by signing a test message (the driver's
`unwrap_check`).
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from approvals.models import ApprovalRequest
from audit.services import record
from kms_console.lib.errors import Conflict

from ..hsm import HsmError
from ..models import Backup, BackupRule, EscrowCeremony, Job, JobKind, Key, KeyVersion
from ..services.jobs import create_job
from ..states import KeyState
from .common import b64, unb64
from .escrow import current_ceremony, is_kek

DEFAULT_VERIFY_SAMPLE = 20
LIVE_VERSION_STATES = (KeyState.PRE_ACTIVATION, KeyState.ACTIVE, KeyState.SUSPENDED, KeyState.DEACTIVATED)


# --- May this version be backed up? ---------------------------------------------------------------


def backup_refusal(key: Key, version: KeyVersion) -> str | None:
    """Why this version may not be backed up under the policy and NIST rules (None: it may)."""
    policy = key.policy.current
    if policy.backup == BackupRule.FORBIDDEN:
        return f"policy {policy.ref} forbids backups of its keys"
    if key.is_asymmetric and not policy.backup_private_keys:
        return (
            f"{key.name} is a private signature key; NIST SP 800-57 Part 1 (Table 5) says such keys are not "
            "backed up (non-repudiation), and its policy does not explicitly allow it"
        )
    if is_kek(key):
        return f"{key.name} is the backup KEK; it is escrowed under split knowledge, not backed up"
    if version.state not in LIVE_VERSION_STATES:
        return f"version {version.number} of {key.name} is {version.state}"
    if version.generated_at is None:
        return f"version {version.number} of {key.name} has not been made on the HSM yet"
    if not version.extractable:
        return f"version {version.number} of {key.name} was made non-extractable, so the HSM cannot wrap it"
    return None


def check_backup(key: Key, version: KeyVersion) -> EscrowCeremony:
    """Refuse a backup the rules do not allow; return the ceremony of the KEK it will be made under."""
    refusal = backup_refusal(key, version)
    if refusal:
        raise Conflict(refusal[0].upper() + refusal[1:] + ".", code="backup_not_allowed")
    ceremony = current_ceremony()
    if ceremony is None:
        raise Conflict(
            "There is no escrowed backup KEK: generate an AES-256 wrap_unwrap key and hold an escrow ceremony first.",
            code="no_backup_kek",
        )
    kek = ceremony.kek_version
    if kek.hsm_id != version.hsm_id:
        raise Conflict(
            f"Version {version.number} of {key.name} lives on HSM {version.hsm.name}, the backup KEK on "
            f"{kek.hsm.name}; the HSM can only wrap keys it holds together.",
            code="kek_elsewhere",
        )
    if Backup.objects.filter(version=version, kek_version=kek, destroyed_at__isnull=True).exists():
        raise Conflict(
            f"Version {version.number} of {key.name} is backed up under the current KEK already.", code="backed_up"
        )
    return ceremony


# --- Backup ---------------------------------------------------------------------------------------


def start_backup(*, key: Key, version: KeyVersion, request: ApprovalRequest) -> Job:
    """Queue the wrap of `version` under the current backup KEK. Caller holds the key's row lock."""
    ceremony = check_backup(key, version)
    return create_job(
        kind=JobKind.BACKUP,
        key=key,
        version=version,
        hsm=version.hsm,
        request=request,
        params={"backup_id": str(uuid.uuid4()), "kek_version_id": str(ceremony.kek_version_id)},
    )


def record_backup(job: Job, *, wrapped: bytes, kcv: str, verified: bool) -> Backup:
    """The worker wrapped the version: store the backup (once: the job's backup id is its key)."""
    backup_id = job.params["backup_id"]
    existing = Backup.objects.filter(pk=backup_id).first()
    if existing is not None:
        return existing
    version = KeyVersion.objects.select_for_update().get(pk=job.version_id)
    if version.state == KeyState.DESTROYED:
        raise Conflict(f"Version {version.number} was destroyed while it was being backed up.")
    now = timezone.now()
    backup = Backup.objects.create(
        id=backup_id,
        version=version,
        kek_version_id=job.params["kek_version_id"],
        wrapped=b64(wrapped),
        kcv=kcv,
        created_at=now,
        verified_at=now if verified else None,
        job=job,
        request=job.request,
    )
    record(
        "backup.created",
        target_type="key",
        target_id=version.key_id,
        details={
            "backup": str(backup.pk),
            "key": job.key.name,
            "version": version.number,
            "kcv": kcv,
            "kek_version": str(backup.kek_version_id),
            "verified": verified,
            "request": str(job.request_id) if job.request_id else None,
        },
    )
    return backup


# --- Verification ---------------------------------------------------------------------------------


def verify_backup(backup_id: Any) -> bool | None:
    """Restore-test one backup into a session object and compare key check values.

    A private key's check value is the SHA-256 of the version's recorded public key, given only
    after the unwrapped private key proved by signing a test message that it belongs to that key.

    The HSM step runs outside any transaction; the result is recorded under the backup's row lock.
    Returns True (verified), False (failed) or None (the backup is gone).
    """
    backup = Backup.objects.select_related("version__key", "kek_version__hsm").filter(pk=backup_id).first()
    if backup is None or backup.destroyed_at is not None:
        return None
    error = ""
    try:
        backend = backup.kek_version.hsm.backend()
        kcv = backend.unwrap_check(
            backup.kek_version.cka_id_bytes,
            unb64(backup.wrapped),
            algorithm=backup.version.key.algorithm,
            public_key_pem=backup.version.public_key_pem,
        )
        if kcv != backup.kcv:
            error = f"the restored key's check value {kcv} differs from the recorded {backup.kcv}"
    except HsmError as exc:
        error = exc.message
    except ValueError:
        error = "the stored blob is damaged"
    with transaction.atomic():
        locked = Backup.objects.select_for_update().get(pk=backup.pk)
        if locked.destroyed_at is not None:
            return None
        now = timezone.now()
        if error:
            locked.verify_failed_at = now
            locked.verify_error = error[:2000]
            locked.save(update_fields=["verify_failed_at", "verify_error"])
        else:
            locked.verified_at = now
            locked.verify_error = ""
            locked.save(update_fields=["verified_at", "verify_error"])
        record(
            "backup.verification_failed" if error else "backup.verified",
            target_type="key",
            target_id=backup.version.key_id,
            details={"backup": str(backup.pk), "version": backup.version.number, "error": error or None},
        )
    return not error


def verify_sample(size: int | None = None) -> dict[str, int]:
    """Beat: restore-test the least recently verified live backups (never-verified ones first)."""
    size = size or getattr(settings, "KMS_BACKUP_VERIFY_SAMPLE", DEFAULT_VERIFY_SAMPLE)
    ids = list(
        Backup.objects.filter(destroyed_at__isnull=True)
        .order_by(F("verified_at").asc(nulls_first=True), "created_at")
        .values_list("pk", flat=True)[:size]
    )
    counts = {"verified": 0, "failed": 0}
    for backup_id in ids:
        outcome = verify_backup(backup_id)
        if outcome is True:
            counts["verified"] += 1
        elif outcome is False:
            counts["failed"] += 1
    return counts
