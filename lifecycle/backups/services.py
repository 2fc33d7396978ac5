"""Backup, escrow, restore, export and import: the services behind the dual-controlled actions.

Each sensitive step is an approved request (lifecycle.backups.actions) whose execution queues a Job;
the job's `run` does the HSM step outside any transaction, and its `complete` applies the database
effects under row locks (lifecycle.backups.jobs). The services here are what the actions, the job
handlers, the views and beat call; each write happens in one transaction with its audit event.

Rules of this module:
- The backup KEK is the key whose primary version has a live escrow ceremony (decided here: the
  ceremony is what designates it, so there is never a backup under a KEK nobody can recover).
- Backups follow the policy (`backup`: required, allowed, forbidden) and NIST SP 800-57 Part 1
  Table 5: private signature keys (every RSA/EC key here is a sign_verify key) are not backed up
  unless the policy sets `backup_private_keys`.
- Shares exist in clear only in the browser of their holder (once, at hand-off) and in the
  worker's memory during a restore; everywhere else they are sealed or reduced to a fingerprint.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import uuid
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from accounts import services as accounts
from approvals import services as approvals
from approvals.models import ApprovalRequest
from audit.services import record
from kms_console.lib.errors import ApplicationError, Conflict, Forbidden, NotFound
from kms_console.lib.roles import Role

from ..hsm import HsmError, HsmOperationError, get_algorithm
from ..hsm.base import USAGE_WRAP_UNWRAP
from ..models import (
    Backup,
    BackupRule,
    CeremonyState,
    EscrowCeremony,
    EscrowShare,
    Export,
    Hsm,
    Job,
    JobKind,
    JobStatus,
    Key,
    KeyVersion,
    Restore,
    RestoreShare,
    RestoreState,
)
from ..models.backups import LIVE_CEREMONY_STATES
from ..services.jobs import create_job
from ..states import KeyState
from . import hsm_ops, shares

logger = logging.getLogger(__name__)

KEK_ALGORITHM = "AES-256"
DEFAULT_SHARE_WINDOW_HOURS = 4
DEFAULT_VERIFY_SAMPLE = 20
MIN_RECIPIENT_BITS = 2048
LIVE_VERSION_STATES = (KeyState.PRE_ACTIVATION, KeyState.ACTIVE, KeyState.SUSPENDED, KeyState.DEACTIVATED)


def share_window() -> dt.timedelta:
    return dt.timedelta(hours=getattr(settings, "KMS_RESTORE_SHARE_WINDOW_HOURS", DEFAULT_SHARE_WINDOW_HOURS))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# --- Who is the backup KEK, and may this version be backed up? ------------------------------------


def live_ceremonies() -> QuerySet[EscrowCeremony]:
    return EscrowCeremony.objects.filter(state__in=LIVE_CEREMONY_STATES)


def current_ceremony() -> EscrowCeremony | None:
    """The live ceremony of the backup KEK: its key is active and the escrowed version is its primary."""
    return (
        live_ceremonies()
        .filter(kek_version__key__state=KeyState.ACTIVE, kek_version__key__primary_version=F("kek_version"))
        .select_related("kek_version__key", "kek_version__hsm")
        .order_by("-created_at")
        .first()
    )


def ceremony_for(kek_version: KeyVersion) -> EscrowCeremony | None:
    """The live ceremony that can recover this KEK version (the newest; older ones are superseded)."""
    return live_ceremonies().filter(kek_version=kek_version).order_by("-created_at").first()


def is_kek(key: Key) -> bool:
    return EscrowCeremony.objects.filter(kek_version__key=key).exists()


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


def version_of(key: Key, number: Any) -> KeyVersion:
    """Version `number` of the key (the primary one when number is None)."""
    if number is None:
        if key.primary_version is None:
            raise Conflict(f"Key {key.name} has no version yet.", code="no_version")
        return key.primary_version
    if isinstance(number, bool) or not isinstance(number, int):
        raise ApplicationError("version: must be a version number", code="invalid", details={"version": ["Invalid."]})
    version = key.versions.filter(number=number).first()
    if version is None:
        raise ApplicationError(
            f"version: key {key.name} has no version {number}",
            code="invalid",
            details={"version": ["No such version."]},
        )
    return version


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


# --- Escrow ceremony ------------------------------------------------------------------------------


def check_kek(key: Key) -> KeyVersion:
    """The key can be the backup KEK: active AES-256 wrap/unwrap, primary version made and extractable."""
    if key.algorithm != KEK_ALGORITHM or key.usage != USAGE_WRAP_UNWRAP:
        raise Conflict(
            f"The backup KEK must be an {KEK_ALGORITHM} key for wrap_unwrap; {key.name} is {key.algorithm} for {key.usage}.",
            code="not_a_kek",
        )
    if key.state != KeyState.ACTIVE or key.destroy_after is not None:
        raise Conflict(f"Key {key.name} must be active (and not scheduled for destruction).", code="state_conflict")
    version = key.primary_version
    if version is None or version.generated_at is None:
        raise Conflict(f"Key {key.name} has not been made on the HSM yet.", code="not_generated")
    if not version.extractable:
        raise Conflict(
            f"Key {key.name} was made non-extractable (its policy forbids backup and export), so it cannot be escrowed.",
            code="not_extractable",
        )
    return version


def clean_custodians(names: Any, threshold: Any) -> tuple[list[Any], int]:
    """N distinct, active custodians with a TOTP device, and 2 <= M <= N <= 10."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ApplicationError(
            "custodians: must be a list of usernames", code="invalid", details={"custodians": ["Invalid."]}
        )
    if len(set(names)) != len(names):
        raise ApplicationError(
            "custodians: each custodian may hold one share only",
            code="invalid",
            details={"custodians": ["Duplicate names."]},
        )
    if not 2 <= len(names) <= shares.MAX_SHARES:
        raise ApplicationError(
            f"custodians: name between 2 and {shares.MAX_SHARES} custodians",
            code="invalid",
            details={"custodians": ["Wrong number."]},
        )
    users = []
    for name in names:
        user = get_user_model().objects.filter(username=name, is_active=True).first()
        if user is None or Role.CUSTODIAN not in accounts.roles_of(user) or not accounts.has_confirmed_device(user):
            raise ApplicationError(
                f"custodians: {name} is not an active custodian with a confirmed TOTP device",
                code="invalid",
                details={"custodians": [f"{name} cannot hold a share."]},
            )
        users.append(user)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 2 <= threshold <= len(users):
        raise ApplicationError(
            f"threshold: must be a number from 2 to {len(users)} (the number of custodians)",
            code="invalid",
            details={"threshold": ["Out of range."]},
        )
    return users, threshold


def start_escrow(*, key: Key, holders: list[str], threshold: int, request: ApprovalRequest) -> EscrowCeremony:
    """Create the ceremony and its share rows (who holds which index) and queue the HSM step."""
    version = check_kek(key)
    users, threshold = clean_custodians(holders, threshold)
    now = timezone.now()
    ceremony = EscrowCeremony.objects.create(
        kek_version=version, threshold=threshold, share_count=len(users), created_at=now, request=request
    )
    EscrowShare.objects.bulk_create(
        [EscrowShare(ceremony=ceremony, index=i, holder=user) for i, user in enumerate(users, start=1)]
    )
    job = create_job(
        kind=JobKind.ESCROW,
        key=key,
        version=version,
        hsm=version.hsm,
        request=request,
        params={"ceremony_id": str(ceremony.pk)},
    )
    ceremony.job = job
    ceremony.save(update_fields=["job"])
    record(
        "escrow.started",
        actor=request.requester,
        target_type="key",
        target_id=key.pk,
        details={
            "ceremony": str(ceremony.pk),
            "kek": key.name,
            "kek_version": version.number,
            "threshold": threshold,
            "holders": [u.get_username() for u in users],
            "request": str(request.pk),
        },
    )
    return ceremony


def share_context(ceremony_id: Any, index: int, holder_id: Any) -> str:
    return f"escrow:{ceremony_id}:{index}:{holder_id}"


def record_escrow(job: Job, result: dict[str, Any]) -> EscrowCeremony:
    """The worker wrapped the KEK and split the recovery key: store the blob, fingerprints and sealed shares."""
    ceremony = EscrowCeremony.objects.select_for_update().get(pk=job.params["ceremony_id"])
    if ceremony.state != CeremonyState.PENDING:
        return ceremony
    now = timezone.now()
    by_index = {s["index"]: s for s in result["sealed_shares"]}
    for share in ceremony.shares.select_for_update():
        made = by_index[share.index]
        share.fingerprint = made["fingerprint"]
        share.sealed = made["sealed"]
        share.save(update_fields=["fingerprint", "sealed"])
    ceremony.wrapped_kek = result["wrapped_kek"]
    ceremony.recovery_fingerprint = result["recovery_fingerprint"]
    ceremony.state = CeremonyState.DISTRIBUTING
    ceremony.distributed_at = now
    ceremony.save(update_fields=["wrapped_kek", "recovery_fingerprint", "state", "distributed_at"])
    superseded = []
    for older in (
        live_ceremonies()
        .select_for_update()
        .filter(kek_version__key_id=ceremony.kek_version.key_id)
        .exclude(pk=ceremony.pk)
    ):
        _end_ceremony(older, CeremonyState.SUPERSEDED, now)
        superseded.append(str(older.pk))
    record(
        "escrow.distributing",
        target_type="key",
        target_id=ceremony.kek_version.key_id,
        details={
            "ceremony": str(ceremony.pk),
            "threshold": ceremony.threshold,
            "fingerprints": {str(i): by_index[i]["fingerprint"] for i in sorted(by_index)},
            "superseded": superseded,
        },
    )
    return ceremony


def _end_ceremony(ceremony: EscrowCeremony, state: str, now: dt.datetime) -> None:
    """Wipe what could open the KEK: its wrapped form and any share not yet handed off."""
    ceremony.state = state
    ceremony.wrapped_kek = ""
    ceremony.ended_at = now
    ceremony.save(update_fields=["state", "wrapped_kek", "ended_at"])
    ceremony.shares.exclude(sealed="").update(sealed="")
    record(
        f"escrow.{state}",
        target_type="key",
        target_id=ceremony.kek_version.key_id,
        details={"ceremony": str(ceremony.pk)},
    )


def retrieve_share(*, share_id: Any, user: Any, otp: str | None) -> str:
    """Hand a share to its holder, exactly once. Returns the share's text.

    Under a row lock on the share: the caller must hold it, it must not have been handed off, its
    ceremony must be live, and the caller's TOTP code must verify. The share is unsealed, checked
    against its fingerprint, and wiped from the database in the same transaction that records the
    hand-off; refusals are audited and raised after that transaction commits.
    """
    refusal: ApplicationError | None = None
    text = ""
    with transaction.atomic():
        share = (
            EscrowShare.objects.select_for_update(of=("self",))
            .select_related("ceremony__kek_version__hsm")
            .filter(pk=share_id)
            .first()
        )
        if share is None:
            raise NotFound("No such share.")
        ceremony = share.ceremony
        if share.holder_id != user.pk:
            refusal = Forbidden("This share is held by another custodian.", code="not_share_holder")
        elif share.retrieved_at is not None:
            refusal = Conflict(
                "You took this share already; it is handed off once. If it is lost, ask for a new ceremony.",
                code="share_retrieved",
            )
        elif ceremony.state != CeremonyState.DISTRIBUTING or not share.sealed:
            refusal = Conflict(
                f"The ceremony is {ceremony.state}; this share is no longer handed off.", code="ceremony_over"
            )
        elif accounts.verify_user_otp(user=user, code=otp, purpose=f"retrieve share {share.pk}") is None:
            refusal = Forbidden(
                "The one-time password is wrong, reused or throttled; wait for a new code and try again.",
                code="otp_invalid",
            )
        if refusal is None:
            backend = ceremony.kek_version.hsm.backend()
            value = hsm_ops.unseal(backend, share.sealed, share_context(ceremony.pk, share.index, share.holder_id))
            handed = shares.Share(ceremony_id=ceremony.pk, index=share.index, value=value)
            if handed.fingerprint != share.fingerprint:
                raise ApplicationError("The stored share does not match its fingerprint; hold a new ceremony.")
            now = timezone.now()
            share.sealed = ""
            share.retrieved_at = now
            share.save(update_fields=["sealed", "retrieved_at"])
            record(
                "escrow.share_handed_off",
                actor=user,
                target_type="key",
                target_id=ceremony.kek_version.key_id,
                details={
                    "ceremony": str(ceremony.pk),
                    "index": share.index,
                    "holder": user.get_username(),
                    "fingerprint": share.fingerprint,
                },
            )
            if not ceremony.shares.filter(retrieved_at__isnull=True).exists():
                ceremony = EscrowCeremony.objects.select_for_update().get(pk=ceremony.pk)
                ceremony.state = CeremonyState.COMPLETE
                ceremony.completed_at = now
                ceremony.save(update_fields=["state", "completed_at"])
                record(
                    "escrow.complete",
                    target_type="key",
                    target_id=ceremony.kek_version.key_id,
                    details={"ceremony": str(ceremony.pk)},
                )
            text = handed.text
        else:
            record(
                "escrow.share_refused",
                actor=user,
                target_type="key",
                target_id=ceremony.kek_version.key_id,
                details={"ceremony": str(ceremony.pk), "index": share.index, "reason": refusal.code},
            )
    if refusal is not None:
        raise refusal
    return text


def custody_gaps() -> list[EscrowShare]:
    """Shares of live ceremonies whose holder can no longer act as custodian (left, disabled, role removed).

    The compliance dashboard reports these; a new escrow ceremony with other holders answers them.
    """
    gaps = []
    live = EscrowShare.objects.filter(ceremony__state__in=LIVE_CEREMONY_STATES)
    # roles_of reads the prefetched groups: one query for every holder's roles, not one each.
    for share in live.select_related("holder", "ceremony").prefetch_related("holder__groups"):
        if not share.holder.is_active or Role.CUSTODIAN not in accounts.roles_of(share.holder):
            gaps.append(share)
    return gaps


# --- Restore --------------------------------------------------------------------------------------


def restore_target(backup: Backup, hsm_name: Any) -> Hsm:
    if hsm_name in (None, ""):
        return backup.version.hsm
    hsm = Hsm.objects.filter(name=hsm_name, retired_at__isnull=True).first() if isinstance(hsm_name, str) else None
    if hsm is None:
        raise ApplicationError(
            f"hsm: no registered HSM named {hsm_name!r}", code="invalid", details={"hsm": ["No such HSM."]}
        )
    return hsm


def check_restore(backup: Backup) -> EscrowCeremony:
    if backup.destroyed_at is not None:
        raise Conflict("This backup was destroyed.", code="backup_destroyed")
    if backup.version.state == KeyState.DESTROYED:
        raise Conflict("The backed-up version was destroyed; it is not restored.", code="version_destroyed")
    ceremony = ceremony_for(backup.kek_version)
    if ceremony is None:
        raise Conflict("No live escrow ceremony can recover the KEK this backup was made under.", code="no_escrow")
    return ceremony


def start_restore(*, backup: Backup, hsm: Hsm, request: ApprovalRequest) -> Restore:
    """The request was approved: open the window in which custodians enter their shares."""
    ongoing = Restore.objects.filter(
        request=request, state__in=[RestoreState.COLLECTING, RestoreState.RESTORING]
    ).first()
    if ongoing is not None:
        return ongoing
    ceremony = check_restore(backup)
    now = timezone.now()
    until = now + share_window()
    if request.execute_by and request.execute_by < until:
        until = request.execute_by  # the job must start inside the request's execution window
    restore = Restore.objects.create(
        backup=backup,
        ceremony=ceremony,
        target_hsm=hsm,
        request=request,
        state=RestoreState.COLLECTING,
        collect_until=until,
        created_at=now,
    )
    record(
        "restore.collecting",
        actor=request.requester,
        target_type="key",
        target_id=backup.version.key_id,
        details={
            "restore": str(restore.pk),
            "backup": str(backup.pk),
            "ceremony": str(ceremony.pk),
            "threshold": ceremony.threshold,
            "hsm": hsm.name,
            "collect_until": until.isoformat(),
            "request": str(request.pk),
        },
    )
    return restore


def restore_context(restore_id: Any, index: int) -> str:
    return f"restore:{restore_id}:{index}"


def _refuse_share(restore: Restore, user: Any, reason: ApplicationError, index: int | None = None) -> None:
    record(
        "restore.share_refused",
        actor=user,
        target_type="key",
        target_id=restore.backup.version.key_id,
        details={"restore": str(restore.pk), "index": index, "reason": reason.code},
    )


def enter_share(*, restore_id: Any, user: Any, share_text: str, otp: str | None) -> Restore:
    """A custodian hands their share in for a restore. The M-th share queues the restore job.

    Checks, in order, under a row lock on the restore: it is collecting and inside its window (a late
    one expires now); the caller may act as custodian and their TOTP code verifies; the text is a
    share of this restore's ceremony; the caller holds that share; it matches its fingerprint; it
    was not entered before (by anyone) and the caller did not enter another. A refusal is audited
    and changes nothing else.
    """
    refusal: ApplicationError | None = None
    index: int | None = None
    with transaction.atomic():
        restore = (
            Restore.objects.select_for_update(of=("self",))
            .select_related("backup__version__key", "ceremony", "target_hsm", "request")
            .filter(pk=restore_id)
            .first()
        )
        if restore is None:
            raise NotFound("No such restore.")
        now = timezone.now()
        if restore.state == RestoreState.COLLECTING and now > restore.collect_until:
            _expire_restore(restore, now)
            refusal = Conflict("The window for entering shares closed.", code="restore_expired")
        elif restore.state != RestoreState.COLLECTING:
            refusal = Conflict(
                f"The restore is {restore.state}; it takes no more shares.", code=f"restore_{restore.state}"
            )
        elif (problem := accounts.approver_problem(user, {Role.CUSTODIAN})) is not None:
            refusal = Forbidden(f"You cannot hand in a share: {problem}.", code="not_eligible")
        elif accounts.verify_user_otp(user=user, code=otp, purpose=f"enter share for restore {restore.pk}") is None:
            refusal = Forbidden(
                "The one-time password is wrong, reused or throttled; wait for a new code and try again.",
                code="otp_invalid",
            )
        else:
            try:
                given = shares.parse(share_text)
            except shares.ShareInvalid as exc:
                given, refusal = None, exc
            if given is not None:
                index = given.index
                held = restore.ceremony.shares.filter(index=given.index).first()
                if given.ceremony_id != restore.ceremony_id or held is None:
                    refusal = Conflict(
                        "That share belongs to another escrow ceremony, not the one that can open this backup.",
                        code="share_wrong_ceremony",
                    )
                elif held.holder_id != user.pk:
                    refusal = Forbidden(
                        "That share is held by another custodian; each custodian enters their own share.",
                        code="not_share_holder",
                    )
                elif given.fingerprint != held.fingerprint:
                    refusal = Conflict(
                        "That share does not match the share you were given (check for a typo).", code="share_mismatch"
                    )
                elif restore.entered_shares.filter(Q(share=held) | Q(custodian=user)).exists():
                    refusal = Conflict("You entered your share for this restore already.", code="share_duplicate")
                else:
                    _accept_share(restore, held, user, given, now)
        if refusal is not None:
            _refuse_share(restore, user, refusal, index)
    if refusal is not None:
        raise refusal
    return restore


def _accept_share(restore: Restore, held: EscrowShare, user: Any, given: shares.Share, now: dt.datetime) -> None:
    backend = restore.target_hsm.backend()
    RestoreShare.objects.create(
        restore=restore,
        share=held,
        custodian=user,
        sealed=hsm_ops.seal(backend, given.value, restore_context(restore.pk, given.index)),
        entered_at=now,
    )
    entered = restore.entered_shares.count()
    record(
        "restore.share_entered",
        actor=user,
        target_type="key",
        target_id=restore.backup.version.key_id,
        details={
            "restore": str(restore.pk),
            "index": given.index,
            "entered": entered,
            "threshold": restore.ceremony.threshold,
        },
    )
    if entered >= restore.ceremony.threshold:
        version = restore.backup.version
        job = create_job(
            kind=JobKind.RESTORE,
            key=version.key,
            version=version,
            hsm=restore.target_hsm,
            request=restore.request,
            params={"restore_id": str(restore.pk), "backup_id": str(restore.backup_id)},
        )
        restore.state = RestoreState.RESTORING
        restore.job = job
        restore.save(update_fields=["state", "job"])


def _wipe_entered(restore: Restore) -> None:
    restore.entered_shares.exclude(sealed="").update(sealed="")


def _expire_restore(restore: Restore, now: dt.datetime) -> None:
    restore.state = RestoreState.EXPIRED
    restore.finished_at = now
    restore.error = "the window for entering shares closed"
    restore.save(update_fields=["state", "finished_at", "error"])
    _wipe_entered(restore)
    record(
        "restore.expired",
        target_type="key",
        target_id=restore.backup.version.key_id,
        details={
            "restore": str(restore.pk),
            "entered": restore.entered_shares.count(),
            "threshold": restore.ceremony.threshold,
        },
    )
    approvals.mark_failed(
        restore.request_id,
        f"Only {restore.entered_shares.count()} of {restore.ceremony.threshold} shares were entered before the window closed.",
    )


def fail_restore(restore_id: Any, message: str) -> None:
    """The restore job failed for good: end the restore and wipe its entered shares."""
    with transaction.atomic():
        restore = Restore.objects.select_for_update().select_related("backup__version").get(pk=restore_id)
        if restore.state not in (RestoreState.COLLECTING, RestoreState.RESTORING):
            return
        restore.state = RestoreState.FAILED
        restore.error = message[:2000]
        restore.finished_at = timezone.now()
        restore.save(update_fields=["state", "error", "finished_at"])
        _wipe_entered(restore)
        record(
            "restore.failed",
            target_type="key",
            target_id=restore.backup.version.key_id,
            details={"restore": str(restore.pk), "error": restore.error},
        )


def restore_material(restore: Restore) -> list[shares.Share]:
    """The entered shares, unsealed (worker only, in memory, for one restore run)."""
    backend = restore.target_hsm.backend()
    result = []
    for entered in restore.entered_shares.select_related("share"):
        if not entered.sealed:
            raise ApplicationError("The entered shares were wiped; the restore needs its shares entered again.")
        index = entered.share.index
        value = hsm_ops.unseal(backend, entered.sealed, restore_context(restore.pk, index))
        result.append(shares.Share(ceremony_id=restore.ceremony_id, index=index, value=value))
    return result


def record_restore(job: Job, result: dict[str, Any]) -> Restore:
    """The worker restored the version on the target HSM: record where it lives now."""
    restore = Restore.objects.select_for_update().get(pk=job.params["restore_id"])
    if restore.state == RestoreState.RESTORED:
        return restore
    version = KeyVersion.objects.select_for_update().select_related("key", "hsm").get(pk=job.version_id)
    key = Key.objects.select_for_update().get(pk=version.key_id)
    now = timezone.now()
    moved_from = version.hsm.name
    if version.hsm_id != restore.target_hsm_id:
        version.hsm_id = restore.target_hsm_id
        version.save(update_fields=["hsm"])
        if key.primary_version_id == version.pk:
            # New versions of the key (rotation) are made where its primary version lives now.
            key.hsm_id = restore.target_hsm_id
            key.save(update_fields=["hsm"])
    restore.state = RestoreState.RESTORED
    restore.restored_kcv = result["kcv"]
    restore.finished_at = now
    restore.save(update_fields=["state", "restored_kcv", "finished_at"])
    _wipe_entered(restore)
    record(
        "backup.restored",
        target_type="key",
        target_id=key.pk,
        details={
            "restore": str(restore.pk),
            "backup": str(restore.backup_id),
            "key": key.name,
            "version": version.number,
            "kcv": result["kcv"],
            "from_hsm": moved_from,
            "hsm": restore.target_hsm.name,
            "created": result.get("created", True),
            "request": str(restore.request_id),
        },
    )
    return restore


def expire_restores(now: dt.datetime | None = None) -> int:
    """Beat: close share windows that ran out; end restores whose job failed for good."""
    now = now or timezone.now()
    count = 0
    for pk in Restore.objects.filter(state=RestoreState.COLLECTING, collect_until__lt=now).values_list("pk", flat=True):
        with transaction.atomic():
            restore = Restore.objects.select_for_update().get(pk=pk)
            if restore.state == RestoreState.COLLECTING and restore.collect_until < now:
                _expire_restore(restore, now)
                count += 1
    for pk in Restore.objects.filter(state=RestoreState.RESTORING, job__status=JobStatus.FAILED).values_list(
        "pk", flat=True
    ):
        fail_restore(pk, "the restore job failed")
        count += 1
    return count


# --- Export ---------------------------------------------------------------------------------------


def load_recipient_key(pem: Any) -> tuple[str, str]:
    """Validate a recipient's RSA public key (PEM, >= 2048 bits). Returns (normalised PEM, SHA-256 of its DER)."""
    if not isinstance(pem, str) or not pem.strip() or len(pem) > 10_000:
        raise ApplicationError(
            "recipient_public_key: must be an RSA public key in PEM form",
            code="invalid",
            details={"recipient_public_key": ["Required."]},
        )
    try:
        public = serialization.load_pem_public_key(pem.strip().encode())
    except (ValueError, TypeError):
        raise ApplicationError(
            "recipient_public_key: is not a PEM public key",
            code="invalid",
            details={"recipient_public_key": ["Not a PEM public key."]},
        ) from None
    if not isinstance(public, rsa.RSAPublicKey) or public.key_size < MIN_RECIPIENT_BITS:
        raise ApplicationError(
            f"recipient_public_key: must be an RSA key of at least {MIN_RECIPIENT_BITS} bits",
            code="invalid",
            details={"recipient_public_key": ["RSA, 2048 bits or more."]},
        )
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    normalised = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return normalised, hashlib.sha256(der).hexdigest()


def check_export(key: Key, version: KeyVersion) -> None:
    policy = key.policy.current
    if not policy.exportable:
        raise Conflict(f"Policy {policy.ref} does not allow wrapped export of its keys.", code="export_not_allowed")
    if get_algorithm(key.algorithm).asymmetric:
        raise Conflict(
            f"{key.name} is a private signature key; it is never distributed (only its public key is).",
            code="export_not_allowed",
        )
    if is_kek(key):
        raise Conflict(f"{key.name} is the backup KEK; it is never exported.", code="export_not_allowed")
    if version.state not in (KeyState.ACTIVE, KeyState.DEACTIVATED) or version.generated_at is None:
        raise Conflict(f"Version {version.number} of {key.name} is {version.state}.", code="state_conflict")
    if not version.extractable:
        raise Conflict(f"Version {version.number} of {key.name} is not extractable.", code="export_not_allowed")


def record_export(job: Job, result: dict[str, Any]) -> Export:
    export_id = job.params["export_id"]
    existing = Export.objects.filter(pk=export_id).first()
    if existing is not None:
        return existing
    p = job.request.parameters
    export = Export.objects.create(
        id=export_id,
        version=job.version,
        recipient=p["recipient"],
        recipient_fingerprint=p["recipient_fingerprint"],
        recipient_public_key_pem=p["recipient_public_key"],
        encrypted_transport_key=result["encrypted_transport_key"],
        wrapped_key=result["wrapped_key"],
        kcv=job.version.kcv,
        created_at=timezone.now(),
        job=job,
        request=job.request,
    )
    record(
        "key.exported",
        target_type="key",
        target_id=job.key_id,
        details={
            "export": str(export.pk),
            "key": job.key.name,
            "version": job.version.number,
            "kcv": export.kcv,
            "recipient": export.recipient,
            "recipient_fingerprint": export.recipient_fingerprint,
            "request": str(job.request_id),
        },
    )
    return export


def export_for_download(*, export_id: Any, user: Any) -> Export:
    """The export's blobs for its requester (recorded as a download)."""
    with transaction.atomic():
        export = (
            Export.objects.select_for_update().select_related("request", "version__key").filter(pk=export_id).first()
        )
        if export is None:
            raise NotFound("No such export.")
        if export.request.requester_id != user.pk:
            raise Forbidden("Only the person who requested the export downloads it.", code="not_requester")
        first = export.downloaded_at is None
        if first:
            export.downloaded_at = timezone.now()
            export.save(update_fields=["downloaded_at"])
        record(
            "key.export_downloaded",
            actor=user,
            target_type="key",
            target_id=export.version.key_id,
            details={"export": str(export.pk), "first": first},
        )
    return export


# --- Verification ---------------------------------------------------------------------------------


def verify_backup(backup_id: Any) -> bool | None:
    """Restore-test one backup into a session object and compare key check values.

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
            backup.kek_version.cka_id_bytes, unb64(backup.wrapped), algorithm=backup.version.key.algorithm
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


# --- Destruction ----------------------------------------------------------------------------------


def destroy_backups(key: Key, versions: list[KeyVersion]) -> list[dict[str, Any]]:
    """DESTRUCTION_HOOKS entry: wipe every backup of these versions (and, for a KEK, its escrow).

    Idempotent: backups wiped by an earlier attempt are listed again, so the certificate always
    names them all. Raises HsmOperationError if a blob survived.
    """
    version_ids = [v.pk for v in versions]
    now = timezone.now()
    with transaction.atomic():
        for backup in Backup.objects.select_for_update().filter(version_id__in=version_ids, destroyed_at__isnull=True):
            backup.wrapped = ""
            backup.destroyed_at = now
            backup.save(update_fields=["wrapped", "destroyed_at"])
            record(
                "backup.destroyed",
                target_type="key",
                target_id=key.pk,
                details={"backup": str(backup.pk), "version": backup.version.number, "kcv": backup.kcv},
            )
        for ceremony in (
            EscrowCeremony.objects.select_for_update()
            .filter(kek_version_id__in=version_ids)
            .exclude(state__in=[CeremonyState.DESTROYED, CeremonyState.SUPERSEDED])
        ):
            _end_ceremony(ceremony, CeremonyState.DESTROYED, now)
        for restore in Restore.objects.select_for_update().filter(
            backup__version_id__in=version_ids, state=RestoreState.COLLECTING
        ):
            _expire_restore(restore, now)
    listed: list[dict[str, Any]] = []
    for backup in Backup.objects.filter(version_id__in=version_ids).select_related("version").order_by("created_at"):
        if backup.wrapped:
            raise HsmOperationError(f"backup {backup.pk} of version {backup.version.number} still holds its blob")
        listed.append(
            {
                "kind": "backup",
                "id": str(backup.pk),
                "version": backup.version.number,
                "kcv": backup.kcv,
                "kek_version": str(backup.kek_version_id),
                "created_at": backup.created_at.isoformat(),
                "destroyed_at": backup.destroyed_at.isoformat() if backup.destroyed_at else None,
                "wiped": True,
            }
        )
    for ceremony in EscrowCeremony.objects.filter(kek_version_id__in=version_ids).order_by("created_at"):
        if ceremony.wrapped_kek:
            raise HsmOperationError(f"escrow {ceremony.pk} still holds the wrapped KEK")
        listed.append(
            {
                "kind": "escrow",
                "id": str(ceremony.pk),
                "kek_version": str(ceremony.kek_version_id),
                "created_at": ceremony.created_at.isoformat(),
                "wiped": True,
            }
        )
    return listed


# --- Import key -----------------------------------------------------------------------------------


def import_key_info(*, hsm: Hsm, actor: Any = None) -> dict[str, Any]:
    """The HSM's import public key (made on first use, which is audited) and how to wrap for it."""
    backend = hsm.backend()
    cka_id, created = hsm_ops.ensure_import_key(backend)
    pem = backend.public_key_pem(cka_id, hsm_ops.IMPORT_KEY_ALGORITHM)
    public = serialization.load_pem_public_key(pem.encode())
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    fingerprint = hashlib.sha256(der).hexdigest()
    if created:
        record(
            "import_key.created",
            actor=actor,
            target_type="hsm",
            target_id=hsm.pk,
            details={"hsm": hsm.name, "cka_id": cka_id.hex(), "fingerprint": fingerprint},
        )
    return {
        "hsm": hsm.name,
        "algorithm": hsm_ops.IMPORT_KEY_ALGORITHM,
        "public_key_pem": pem,
        "fingerprint": fingerprint,
        "format": "encrypted_transport_key = RSA-OAEP(SHA-256, MGF1-SHA-256, no label) of a fresh AES-256 "
        "transport key; wrapped_key = AES key wrap (RFC 3394) of the key under the transport key; both base64",
    }
