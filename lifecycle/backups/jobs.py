"""The HSM steps of backup, escrow, restore, export and import, as job handlers (lifecycle.services.jobs).

Each `run` works on the HSM outside any database transaction and is safe to repeat: a backup wrap
and an export make no token object; escrow makes only session objects; restore and import unwrap
into the CKA_ID chosen before dispatch and, when an object with that CKA_ID exists already, check
and return it instead of making a second. The rows they lead to are created by `complete` with ids
also chosen before dispatch, so a task delivered twice makes one row. Results hold no secrets; the
blobs `run` passes to `complete` (wrapped keys, sealed shares) are removed from the result before it
is saved in the job row and the audit trail.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.db import DatabaseError

from kms_console.lib.errors import Conflict

from ..hsm import HsmDataError, HsmError, HsmOperationError
from ..models import Backup, EscrowCeremony, Job, JobKind, KeyVersion, Restore
from ..models.backups import LIVE_CEREMONY_STATES
from ..services import keys
from ..services.jobs import JobHandler, register_job_handler
from ..services.steps import DESTRUCTION_HOOKS, object_label
from ..states import KeyState
from . import hsm_ops, shares
from .backup import record_backup
from .common import b64, unb64
from .destruction import destroy_backups
from .distribution import record_export
from .escrow import KEK_ALGORITHM, record_escrow, share_context
from .restore import (
    ceremony_gone_message,
    discard_restored,
    fail_restore,
    record_restore,
    record_stray_copy,
    restore_material,
)

# --- Backup ---------------------------------------------------------------------------------------


def _backup_run(job: Job) -> dict[str, Any]:
    version = job.version
    kek = KeyVersion.objects.get(pk=job.params["kek_version_id"])
    backend = version.hsm.backend()
    wrapped = backend.wrap(kek.cka_id_bytes, version.cka_id_bytes)
    # Prove the blob restores before keeping it: unwrap into a session object and compare key check
    # values (a private key first proves, by signing, that it belongs to the version's public key).
    kcv = backend.unwrap_check(
        kek.cka_id_bytes, wrapped, algorithm=job.key.algorithm, public_key_pem=version.public_key_pem
    )
    if kcv != version.kcv:
        raise HsmDataError(f"the test restore of the new backup gave check value {kcv}, not {version.kcv}")
    return {"backup_id": job.params["backup_id"], "kcv": version.kcv, "verified": True, "wrapped": b64(wrapped)}


def _backup_complete(job: Job, result: dict[str, Any]) -> None:
    wrapped = unb64(result.pop("wrapped"))
    record_backup(job, wrapped=wrapped, kcv=result["kcv"], verified=result["verified"])


# --- Escrow ---------------------------------------------------------------------------------------


def _escrow_run(job: Job) -> dict[str, Any]:
    """1. A fresh 256-bit recovery key. 2. The KEK wrapped under it inside the HSM. 3. The recovery
    key split M-of-N. 4. Each share sealed under the HSM's envelope key for its holder."""
    ceremony = EscrowCeremony.objects.select_related("kek_version__hsm").get(pk=job.params["ceremony_id"])
    kek = ceremony.kek_version
    backend = kek.hsm.backend()
    recovery_key = secrets.token_bytes(shares.RECOVERY_KEY_BYTES)
    try:
        with backend.transient_key(recovery_key) as recovery_id:
            wrapped_kek = backend.wrap(recovery_id, kek.cka_id_bytes)
        made = shares.split(recovery_key, ceremony.threshold, ceremony.share_count, ceremony.pk)
        holders = dict(ceremony.shares.values_list("index", "holder_id"))
        sealed = [
            {
                "index": share.index,
                "fingerprint": share.fingerprint,
                "sealed": hsm_ops.seal(
                    backend, share.value, share_context(ceremony.pk, share.index, holders[share.index])
                ),
            }
            for share in made
        ]
        fingerprint = shares.recovery_fingerprint(recovery_key)
    finally:
        del recovery_key
    return {
        "ceremony": str(ceremony.pk),
        "recovery_fingerprint": fingerprint,
        "wrapped_kek": b64(wrapped_kek),
        "sealed_shares": sealed,
    }


def _escrow_complete(job: Job, result: dict[str, Any]) -> None:
    record_escrow(job, result)
    result.pop("wrapped_kek")
    # Keep only the fingerprints in the job row and the audit trail.
    result["fingerprints"] = {str(s["index"]): s["fingerprint"] for s in result.pop("sealed_shares")}


# --- Restore --------------------------------------------------------------------------------------


def _is_the_backed_up_key(backend: Any, kcv: str, backup: Backup) -> bool:
    """An object already under the version's CKA_ID is the backed-up key: same check value and, for a
    pair, a private key that signs for the recorded public key (the public half alone proves nothing)."""
    version = backup.version
    if kcv != backup.kcv:
        return False
    if not version.key.is_asymmetric:
        return True
    try:
        backend.prove_key_pair(version.cka_id_bytes, version.key.algorithm, version.public_key_pem)
    except HsmDataError:
        return False
    return True


def _source_check(restore: Restore, version: KeyVersion) -> dict[str, Any]:
    """For a restore into another HSM: does the HSM the version lives on now still hold its object?

    `source_present` is True, False, or None when that HSM could not be asked (then the restore
    records a copy there all the same: only a confirmed absence leaves none).
    """
    source = version.hsm
    if source.pk == restore.target_hsm_id:
        return {}
    try:
        present: bool | None = source.backend().exists(version.cka_id_bytes)
    except HsmError:
        present = None
    return {"source_hsm": source.name, "source_hsm_id": str(source.pk), "source_present": present}


def _discard_earlier_delivery(restore: Restore, backup: Backup) -> None:
    """A version destroyed or scheduled for destruction is not restored; but an earlier delivery of
    this job may have unwrapped it onto the target before the worker died, and no record names that
    object, so destruction would not reach it. Only the backed-up key itself counts, never another
    object under the same CKA_ID.

    - Destroyed: the destruction is over, so the object is a stray: destroy it (and confirm it is gone).
    - Scheduled: record it as a copy of the version on the target (`record_stray_copy`, under the
      version's row lock), so that the destruction reaches it; nothing is destroyed early. If the
      destruction committed in between, the lock shows it, and the object is destroyed now.
    """
    version = backup.version
    target = restore.target_hsm
    backend = target.backend()
    existing = backend.lookup(version.cka_id_bytes, version.key.algorithm)
    if existing is None or not _is_the_backed_up_key(backend, existing.kcv, backup):
        return
    if version.state == KeyState.DESTROYED or not record_stray_copy(restore, version):
        discard_restored(restore, version)


def _restore_attempt(job: Job, restore: Restore) -> dict[str, Any]:
    """0. A version destroyed or scheduled for destruction is not restored (and what an earlier
       delivery may have left on the target is destroyed: `_discard_earlier_delivery`).
    1. If the target already holds the version's object with the right KCV, done (a re-run); a
       private key must also prove, by signing, that it belongs to the version's public key.
    2. Unseal the entered shares and recombine the recovery key; check its fingerprint.
    3. Unwrap the KEK under it into a session object; check the KEK's KCV.
    4. Unwrap the backup under the KEK into a token object with the version's CKA_ID; check the KCV,
       and destroy the object again if it does not match (nothing is left half-restored). A private
       key is checked against the version's recorded public key inside the driver, which also makes
       the public-key object from that PEM when the target HSM lacks it (so the version verifies there).
    5. For a restore into another HSM, ask the HSM the version lives on whether it still holds the
       object (`_source_check`): the copy it keeps is recorded with the restore."""
    backup = Backup.objects.select_related("version__key", "version__hsm", "kek_version").get(
        pk=job.params["backup_id"]
    )
    version, key = backup.version, backup.version.key
    if version.state == KeyState.DESTROYED or version.destroy_after or key.destroy_after:
        _discard_earlier_delivery(restore, backup)
        raise Conflict(f"Version {version.number} of {key.name} is destroyed or scheduled for destruction.")
    backend = restore.target_hsm.backend()
    existing = backend.lookup(version.cka_id_bytes, key.algorithm)
    if existing is not None:
        if not _is_the_backed_up_key(backend, existing.kcv, backup):
            raise HsmOperationError(
                f"HSM {restore.target_hsm.name} holds another object under this version's CKA_ID; nothing was restored"
            )
        return {"kcv": backup.kcv, "created": False, "hsm": restore.target_hsm.name, **_source_check(restore, version)}
    ceremony = EscrowCeremony.objects.get(pk=restore.ceremony_id)
    if ceremony.state not in LIVE_CEREMONY_STATES or not ceremony.wrapped_kek:
        raise Conflict(ceremony_gone_message(ceremony))
    entered = restore_material(restore)
    recovery_key = shares.combine(entered)
    try:
        if shares.recovery_fingerprint(recovery_key) != restore.ceremony.recovery_fingerprint:
            raise HsmDataError("the entered shares do not combine to the escrowed recovery key")
        with backend.transient_key(recovery_key) as recovery_id:
            kek_id, kek_kcv = hsm_ops.session_unwrap(
                backend, recovery_id, unb64(restore.ceremony.wrapped_kek), algorithm=KEK_ALGORITHM
            )
    finally:
        del recovery_key
    try:
        if kek_kcv != backup.kek_version.kcv:
            raise HsmDataError("the recovered KEK's check value does not match the escrowed KEK")
        made = backend.unwrap(
            kek_id,
            unb64(backup.wrapped),
            algorithm=key.algorithm,
            usage=key.usage,
            new_cka_id=version.cka_id_bytes,
            label=object_label(key, version),
            extractable=version.extractable,
            store=True,
            public_key_pem=version.public_key_pem,
        )
    finally:
        backend.destroy(kek_id)
    if made.kcv != backup.kcv:
        if made.created:
            backend.destroy(version.cka_id_bytes)
        raise HsmDataError(
            f"the restored key's check value {made.kcv or 'none'} differs from the backup's {backup.kcv}; "
            "nothing was restored"
        )
    return {"kcv": made.kcv, "created": made.created, "hsm": restore.target_hsm.name, **_source_check(restore, version)}


def _restore_run(job: Job) -> dict[str, Any]:
    """Run the restore; a failure for good ends the restore and wipes its entered shares.

    Only failures that trying again cannot mend end it: a permanent HSM error, a refusal
    (ApplicationError), a bug. A transient HSM error and a database error (a deadlock, a lost
    connection) leave the restore and its sealed shares as they are: the job runner retries the
    job (lifecycle.services.jobs.run_job turns a DatabaseError into JobRetryLater).
    """
    restore = Restore.objects.select_related("target_hsm", "ceremony").get(pk=job.params["restore_id"])
    try:
        return _restore_attempt(job, restore)
    except HsmError as exc:
        if not exc.transient:
            fail_restore(restore.pk, exc.message)
        raise
    except DatabaseError:
        raise
    except Exception as exc:
        message = getattr(exc, "message", "the restore could not be carried out")
        fail_restore(restore.pk, message)
        raise


def _restore_complete(job: Job, result: dict[str, Any]) -> None:
    record_restore(job, result)


# --- Export ---------------------------------------------------------------------------------------


def _export_run(job: Job) -> dict[str, Any]:
    version = job.version
    pem = job.request.parameters["recipient_public_key"]
    encrypted_transport, wrapped = version.hsm.backend().wrap_for_recipient(version.cka_id_bytes, pem)
    return {
        "export_id": job.params["export_id"],
        "kcv": version.kcv,
        "encrypted_transport_key": b64(encrypted_transport),
        "wrapped_key": b64(wrapped),
    }


def _export_complete(job: Job, result: dict[str, Any]) -> None:
    record_export(job, result)
    result.pop("encrypted_transport_key")
    result.pop("wrapped_key")


# --- Import ---------------------------------------------------------------------------------------


def _import_run(job: Job) -> dict[str, Any]:
    key, version = job.key, job.version
    p = job.request.parameters
    backend = version.hsm.backend()
    made = backend.unwrap_from_sender(
        bytes.fromhex(p["import_key"]),
        unb64(p["encrypted_transport_key"]),
        unb64(p["wrapped_key"]),
        algorithm=key.algorithm,
        usage=key.usage,
        new_cka_id=version.cka_id_bytes,
        label=object_label(key, version),
        extractable=version.extractable,
    )
    if made.kcv != p["expected_kcv"]:
        if made.created:
            backend.destroy(version.cka_id_bytes)
        raise HsmDataError(
            f"the imported key's check value {made.kcv} is not the expected {p['expected_kcv']}; the object was removed"
        )
    return {"kcv": made.kcv, "created": made.created, "cka_id": version.cka_id}


def _import_complete(job: Job, result: dict[str, Any]) -> None:
    keys.complete_generation(job, kcv=result["kcv"], public_key_pem="")


def register() -> None:
    if destroy_backups not in DESTRUCTION_HOOKS:
        DESTRUCTION_HOOKS.append(destroy_backups)
    register_job_handler(JobKind.BACKUP, JobHandler(run=_backup_run, complete=_backup_complete))
    register_job_handler(JobKind.ESCROW, JobHandler(run=_escrow_run, complete=_escrow_complete))
    register_job_handler(JobKind.RESTORE, JobHandler(run=_restore_run, complete=_restore_complete))
    register_job_handler(JobKind.EXPORT, JobHandler(run=_export_run, complete=_export_complete))
    register_job_handler(JobKind.IMPORT, JobHandler(run=_import_run, complete=_import_complete))
