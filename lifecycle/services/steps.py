"""The HSM steps of generation, rotation and destruction, as job handlers.

Backup, restore, export and import register their own handlers the same way
(`jobs.register_job_handler`). Destruction calls every hook in DESTRUCTION_HOOKS so that copies kept
elsewhere (backups) are destroyed in the same job and listed in the certificate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.utils import timezone

from kms_console.lib.canonical import canonical_json, sha256_hex

from ..hsm.base import HsmOperationError
from ..models import DestructionCertificate, Job, JobKind, Key, KeyVersion
from ..states import KeyState
from . import keys
from .jobs import JobHandler, register_job_handler

# hook(key, versions) -> list of {"kind": ..., "id": ..., ...} describing what it destroyed; it must
# be idempotent and raise HsmError when something it should remove is still there afterwards.
DESTRUCTION_HOOKS: list[Callable[[Key, list[KeyVersion]], list[dict[str, Any]]]] = []


def object_label(key: Key, version: KeyVersion) -> str:
    return f"kms:{key.name}:v{version.number}"[:64]


# --- Generate and rotate --------------------------------------------------------------------------


def _generate_run(job: Job) -> dict[str, Any]:
    key, version = job.key, job.version
    made = version.hsm.backend().generate(
        key.algorithm,
        version.cka_id_bytes,
        usage=key.usage,
        label=object_label(key, version),
        extractable=version.extractable,
    )
    return {"kcv": made.kcv, "public_key_pem": made.public_key_pem, "created": made.created, "cka_id": version.cka_id}


def _generate_complete(job: Job, result: dict[str, Any]) -> None:
    keys.complete_generation(job, kcv=result["kcv"], public_key_pem=result["public_key_pem"])
    # Do not keep the public key twice in the job row.
    result.pop("public_key_pem", None)


# --- Destroy --------------------------------------------------------------------------------------


def _versions_to_destroy(job: Job) -> list[KeyVersion]:
    if job.version_id:
        return [job.version]
    return list(job.key.versions.exclude(state=KeyState.DESTROYED).select_related("hsm").order_by("number"))


def _destroy_run(job: Job) -> dict[str, Any]:
    key = job.key
    versions = _versions_to_destroy(job)
    destroyed = []
    for version in versions:
        backend = version.hsm.backend()
        count = backend.destroy(version.cka_id_bytes)
        if backend.exists(version.cka_id_bytes):
            raise HsmOperationError(
                f"version {version.number}'s object is still on token {backend.token_label!r} after destroy"
            )
        destroyed.append(
            {
                "version": version.number,
                "cka_id": version.cka_id,
                "kcv": version.kcv,
                "hsm": version.hsm.name,
                "token_label": backend.token_label,
                "objects_destroyed": count,
                "confirmed_absent": True,
            }
        )
    backups: list[dict[str, Any]] = []
    for hook in DESTRUCTION_HOOKS:
        backups.extend(hook(key, versions))
    return {"versions": destroyed, "backups": backups}


def _destroy_complete(job: Job, result: dict[str, Any]) -> None:
    key = keys.lock_key(job.key_id)
    request = job.request
    reason = request.justification if request is not None else "scheduled destruction"
    for version in KeyVersion.objects.select_for_update().filter(pk__in=[v.pk for v in _versions_to_destroy(job)]):
        keys._set_version_state(version, KeyState.DESTROYED, actor=None, reason=reason, request=request, job=job)
    if job.version_id:
        return  # one version only: the key lives on
    now = timezone.now()
    keys._set_key_state(key, KeyState.DESTROYED, actor=None, reason=reason, request=request, job=job)
    key.destroyed_at = now
    key.save(update_fields=["destroyed_at"])
    body = certificate_body(key, result, request, now)
    DestructionCertificate.objects.create(key=key, issued_at=now, body=body, digest=sha256_hex(canonical_json(body)))


def certificate_body(key: Key, result: dict[str, Any], request: Any, now: Any) -> dict[str, Any]:
    decisions = []
    if request is not None:
        decisions = [
            {
                "approver": d.approver.get_username(),
                "decision": d.decision,
                "at": d.decided_at.isoformat(),
                "otp_device": d.otp_device,
            }
            for d in request.decisions.select_related("approver").order_by("decided_at")
        ]
    return {
        "certificate": "destruction",
        "key": {
            "id": str(key.pk),
            "name": key.name,
            "algorithm": key.algorithm,
            "usage": key.usage,
            "policy": key.policy.current.ref,
        },
        "versions": result.get("versions", []),
        "backups": result.get("backups", []),
        "request": {
            "id": str(request.pk),
            "requester": request.requester.get_username(),
            "justification": request.justification,
            "opened_at": request.created_at.isoformat(),
            "approved_at": request.approved_at.isoformat() if request.approved_at else None,
            "digest": request.digest,
            "decisions": decisions,
        }
        if request is not None
        else None,
        "destroy_after": key.destroy_after.isoformat() if key.destroy_after else None,
        "destroyed_at": now.isoformat(),
        "hsm_confirmation": "every object listed was destroyed and a search of the token for its CKA_ID found nothing",
    }


def register() -> None:
    register_job_handler(JobKind.GENERATE, JobHandler(run=_generate_run, complete=_generate_complete))
    register_job_handler(JobKind.ROTATE, JobHandler(run=_generate_run, complete=_generate_complete))
    register_job_handler(JobKind.DESTROY, JobHandler(run=_destroy_run, complete=_destroy_complete))
