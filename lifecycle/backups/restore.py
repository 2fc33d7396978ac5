"""Restores from a backup: dual control, then M custodians entering their shares within a window.

An approved `restore` request opens a share window (`start_restore`); each custodian's share is
checked and sealed under the target HSM's envelope key (`enter_share`); the M-th share queues the
restore job (lifecycle.backups.jobs), whose result is recorded by `record_restore`. Wrong,
duplicated or foreign shares are refused and audited without changing anything; a window that
closes or a job that fails for good ends the restore and wipes the entered shares.

A restore into another HSM moves the version there; the HSM it lived on keeps a copy unless the
job found the object gone, and that copy is recorded (`VersionCopy`) so that destruction destroys
it too and the HSM is not retired while it holds one.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts import services as accounts
from approvals import services as approvals
from approvals.models import ApprovalRequest
from audit.services import record
from kms_console.lib.errors import ApplicationError, Conflict, Forbidden, NotFound
from kms_console.lib.roles import Role

from ..hsm import HsmOperationError
from ..models import (
    Backup,
    CopyEnd,
    EscrowCeremony,
    EscrowShare,
    Hsm,
    Job,
    JobKind,
    JobStatus,
    Key,
    KeyVersion,
    Restore,
    RestoreShare,
    RestoreState,
    VersionCopy,
)
from ..services.jobs import create_job
from ..states import KeyState
from . import hsm_ops, shares
from .escrow import ceremony_for

DEFAULT_SHARE_WINDOW_HOURS = 4


logger = logging.getLogger(__name__)


def share_window() -> dt.timedelta:
    """How long custodians have to enter their shares once a restore is approved."""
    return dt.timedelta(hours=getattr(settings, "KMS_RESTORE_SHARE_WINDOW_HOURS", DEFAULT_SHARE_WINDOW_HOURS))


def restore_target(backup: Backup, hsm_name: Any) -> Hsm:
    if hsm_name in (None, ""):
        return backup.version.hsm
    hsm = Hsm.objects.filter(name=hsm_name, retired_at__isnull=True).first() if isinstance(hsm_name, str) else None
    if hsm is None:
        raise ApplicationError(
            f"hsm: no registered HSM named {hsm_name!r}", code="invalid", details={"hsm": ["No such HSM."]}
        )
    return hsm


def check_restore(backup: Backup, *, request: ApprovalRequest | None = None) -> EscrowCeremony:
    """The backup can be restored now. One restore of a version at a time: two at once (into
    different HSMs) could each move the version and lose track of the copy the other leaves."""
    if backup.destroyed_at is not None:
        raise Conflict("This backup was destroyed.", code="backup_destroyed")
    if backup.version.state == KeyState.DESTROYED:
        raise Conflict("The backed-up version was destroyed; it is not restored.", code="version_destroyed")
    other = (
        Restore.objects.filter(
            backup__version_id=backup.version_id, state__in=[RestoreState.COLLECTING, RestoreState.RESTORING]
        )
        .exclude(request=request)
        .first()
    )
    if other is not None:
        raise Conflict(
            f"Version {backup.version.number} is being restored already (restore {str(other.pk)[:8]}); "
            "wait until that restore has ended.",
            code="restore_in_progress",
        )
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
    ceremony = check_restore(backup, request=request)
    approved = request.parameters.get("escrow")
    if approved and str(ceremony.pk) != approved:
        # The approvers approved a restore from one ceremony's shares (its holders, its threshold);
        # a retry after that ceremony was superseded must not run on another one.
        raise Conflict(
            "The escrow ceremony this restore was approved with has been replaced by a newer one; open a new "
            "restore request, which the holders of the new ceremony's shares can serve.",
            code="escrow_changed",
        )
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
            expire_restore(restore, now)
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
    """Entered shares are kept sealed only until the restore ends, whichever way it ends."""
    restore.entered_shares.exclude(sealed="").update(sealed="")


def expire_restore(restore: Restore, now: dt.datetime) -> None:
    """Close a collecting restore whose window ran out (or whose key is destroyed): wipe the entered
    shares and fail its request. The caller holds the restore's row lock."""
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


# Why a restore can never run once its ceremony ended, by the ceremony's end state.
_ENDED_CEREMONY = {
    "superseded": "was superseded by a newer one",
    "destroyed": "was destroyed with its KEK",
    "failed": "failed (its shares were not all taken in time)",
}


def ceremony_gone_message(ceremony: Any) -> str:
    why = _ENDED_CEREMONY.get(ceremony.state, "has ended")
    return (
        f"The escrow ceremony this restore relied on {why}; its shares open nothing now. Request the restore "
        "again: the holders enter shares of the current ceremony."
    )


def end_restores_of_ended_ceremony(ceremony: Any, now: dt.datetime) -> int:
    """`ceremony` ended (its wrapped KEK is wiped): restores still collecting its shares can never
    run. End them now, with the reason, and wipe the shares entered so far. A restore whose job is
    queued or running fails when the job finds the ceremony gone (lifecycle.backups.jobs), with
    the same reason. The caller holds the ceremony's lock."""
    message = ceremony_gone_message(ceremony)
    ended = 0
    for restore in (
        Restore.objects.select_for_update()
        .select_related("backup__version")
        .filter(ceremony=ceremony, state=RestoreState.COLLECTING)
    ):
        restore.state = RestoreState.FAILED
        restore.error = message
        restore.finished_at = now
        restore.save(update_fields=["state", "error", "finished_at"])
        _wipe_entered(restore)
        record(
            "restore.failed",
            target_type="key",
            target_id=restore.backup.version.key_id,
            details={"restore": str(restore.pk), "error": message, "reason": f"ceremony_{ceremony.state}"},
        )
        approvals.mark_failed(restore.request_id, message)
        ended += 1
    return ended


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
    """The worker restored the version on the target HSM: record where it lives now, and the copy
    it may have left where it lived before.

    Under row locks (restore, version, key). A version destroyed while the job ran gets nothing
    recorded: the object the job made on the target is destroyed again (and confirmed gone), and
    the job fails.
    """
    restore = Restore.objects.select_for_update().select_related("target_hsm").get(pk=job.params["restore_id"])
    if restore.state == RestoreState.RESTORED:
        return restore
    version = KeyVersion.objects.select_for_update().select_related("key", "hsm").get(pk=job.version_id)
    key = Key.objects.select_for_update().get(pk=version.key_id)
    if version.state == KeyState.DESTROYED:
        discard_restored(restore, version)
        raise Conflict(
            f"Version {version.number} of {key.name} was destroyed while it was being restored; the restored "
            f"object was destroyed again on HSM {restore.target_hsm.name}."
        )
    now = timezone.now()
    moved_from = version.hsm
    copy_left = None
    if version.hsm_id != restore.target_hsm_id:
        copy_left = _record_copy(version, moved_from, restore, result, now)
        # A copy recorded on the target earlier is where the version lives now, not a copy.
        VersionCopy.objects.filter(version=version, hsm_id=restore.target_hsm_id, ended_at__isnull=True).update(
            ended_at=now, end=CopyEnd.PRIMARY
        )
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
            "from_hsm": moved_from.name,
            "hsm": restore.target_hsm.name,
            "created": result.get("created", True),
            "copy_left_on": copy_left.hsm.name if copy_left is not None else None,
            "request": str(restore.request_id),
        },
    )
    return restore


def _record_copy(
    version: KeyVersion, source: Hsm, restore: Restore, result: dict[str, Any], now: dt.datetime
) -> VersionCopy | None:
    """The HSM the version moves away from keeps a copy, unless the job confirmed the object gone
    there. (Not asked, or asked about another HSM than the one the version names now: a copy.)"""
    checked_here = result.get("source_hsm_id") == str(source.pk)
    seen = result.get("source_present") if checked_here else None
    if seen is False:
        return None
    live = VersionCopy.objects.filter(version=version, hsm=source, ended_at__isnull=True).first()
    if live is not None:
        return live
    return VersionCopy.objects.create(version=version, hsm=source, restore=restore, seen_present=seen, recorded_at=now)


@transaction.atomic
def record_stray_copy(restore: Restore, version: KeyVersion) -> bool:
    """The target of a restore that was refused holds the version's material (an earlier delivery
    put it there): record it as a copy, so that the version's destruction destroys it too. Nothing
    is recorded where the version lives or where a live copy is recorded already (row lock on the
    version: a concurrent restore that moves it is seen).

    Returns False when the version turned out destroyed meanwhile (its destruction committed after
    the caller looked): no record can make a later destruction reach the object, so the caller
    destroys it now (`discard_restored`).
    """
    version = KeyVersion.objects.select_for_update().get(pk=version.pk)
    if version.state == KeyState.DESTROYED:
        return False
    if version.hsm_id == restore.target_hsm_id:
        return True
    if VersionCopy.objects.filter(version=version, hsm_id=restore.target_hsm_id, ended_at__isnull=True).exists():
        return True
    VersionCopy.objects.create(
        version=version, hsm_id=restore.target_hsm_id, restore=restore, seen_present=True, recorded_at=timezone.now()
    )
    record(
        "restore.copy_recorded",
        target_type="key",
        target_id=version.key_id,
        details={
            "restore": str(restore.pk),
            "version": version.number,
            "hsm": restore.target_hsm.name,
            "reason": "an earlier run of the refused restore left the key there",
        },
    )
    return True


def discard_restored(restore: Restore, version: KeyVersion) -> None:
    """Destroy what a restore put on its target for a version destroyed meanwhile; confirm it is gone.

    Whatever is on the target under the version's CKA_ID now came from this restore (a destroyed
    version's objects were destroyed and confirmed absent), also when a re-run found it there.
    """
    backend = restore.target_hsm.backend()
    backend.destroy(version.cka_id_bytes)
    if backend.exists(version.cka_id_bytes):
        raise HsmOperationError(
            f"the object restored on HSM {restore.target_hsm.name} for a destroyed version is still there"
        )


def expire_restores(now: dt.datetime | None = None) -> int:
    """Beat: close share windows that ran out; end restores whose job failed for good. Each restore
    in its own transaction: one that cannot be closed now (a lock timeout, a lost connection) is
    logged and tried again at the next run, and does not hold up the others."""
    now = now or timezone.now()
    count = 0
    for pk in list(
        Restore.objects.filter(state=RestoreState.COLLECTING, collect_until__lt=now).values_list("pk", flat=True)
    ):
        try:
            with transaction.atomic():
                restore = Restore.objects.select_for_update().get(pk=pk)
                if restore.state == RestoreState.COLLECTING and restore.collect_until < now:
                    expire_restore(restore, now)
                    count += 1
        except DatabaseError:
            logger.exception("could not close the share window of restore %s; trying again next run", pk)
    for pk in list(
        Restore.objects.filter(state=RestoreState.RESTORING, job__status=JobStatus.FAILED).values_list("pk", flat=True)
    ):
        try:
            fail_restore(pk, "the restore job failed")
            count += 1
        except DatabaseError:
            logger.exception("could not end restore %s after its job failed; trying again next run", pk)
    return count
