"""The HSM steps of generation, rotation and destruction, as job handlers.

Backup, restore, export and import register their own handlers the same way
(`jobs.register_job_handler`). Destruction destroys a version on every HSM that holds or may hold it
(the one it names and each live `VersionCopy`, which a restore into another HSM leaves behind),
confirms its absence on each, and calls every hook in DESTRUCTION_HOOKS so that copies kept outside
the HSMs (backups) are destroyed in the same job; the certificate lists them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.utils import timezone

from kms_console.lib.canonical import canonical_json, sha256_hex
from kms_console.lib.errors import Conflict

from ..hsm.base import HsmOperationError
from ..models import CopyEnd, DestructionCertificate, Hsm, Job, JobKind, Key, KeyVersion, VersionCopy
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


def locations(version: KeyVersion) -> list[Hsm]:
    """Every HSM that holds or may hold the version's material: the one it names, then its live copies."""
    found = [version.hsm]
    for copy in VersionCopy.objects.filter(version=version, ended_at__isnull=True).select_related("hsm"):
        if copy.hsm_id not in {hsm.pk for hsm in found}:
            found.append(copy.hsm)
    return found


def _destroy_on(hsm: Hsm, version: KeyVersion) -> dict[str, Any]:
    """Destroy the version's objects on one HSM and confirm, by a search of the token, that they are gone."""
    backend = hsm.backend()
    count = backend.destroy(version.cka_id_bytes)
    if backend.exists(version.cka_id_bytes):
        raise HsmOperationError(
            f"version {version.number}'s object is still on token {backend.token_label!r} after destroy"
        )
    return {"hsm": hsm.name, "token_label": backend.token_label, "objects_destroyed": count, "confirmed_absent": True}


def _destroy_run(job: Job) -> dict[str, Any]:
    key = job.key
    versions = _versions_to_destroy(job)
    destroyed = []
    for version in versions:
        primary, *copies = [_destroy_on(hsm, version) for hsm in locations(version)]
        destroyed.append(
            {"version": version.number, "cka_id": version.cka_id, "kcv": version.kcv, **primary, "copies": copies}
        )
    backups: list[dict[str, Any]] = []
    for hook in DESTRUCTION_HOOKS:
        backups.extend(hook(key, versions))
    return {"versions": destroyed, "backups": backups}


def _check_locations_covered(versions: list[KeyVersion], result: dict[str, Any]) -> None:
    """Every location a version has now (rows locked) was destroyed by the run: a restore that moved
    or copied the version meanwhile makes the job fail, so that it runs again and reaches it."""
    done = {
        entry["version"]: {entry["hsm"], *(copy["hsm"] for copy in entry.get("copies", []))}
        for entry in result.get("versions", [])
    }
    for version in versions:
        missed = [hsm.name for hsm in locations(version) if hsm.name not in done.get(version.number, set())]
        if missed:
            raise Conflict(
                f"Version {version.number} was restored onto HSM {', '.join(missed)} while it was being destroyed; "
                "the destruction must run again to reach it."
            )


def _destroy_complete(job: Job, result: dict[str, Any]) -> None:
    key = keys.lock_key(job.key_id)
    request = job.request
    reason = request.justification if request is not None else "scheduled destruction"
    versions = list(
        KeyVersion.objects.select_for_update()
        .select_related("hsm")
        .filter(pk__in=[v.pk for v in _versions_to_destroy(job)])
    )
    _check_locations_covered(versions, result)
    now = timezone.now()
    # The copies are destroyed and confirmed absent: they no longer hold the version.
    VersionCopy.objects.filter(version__in=versions, ended_at__isnull=True).update(ended_at=now, end=CopyEnd.DESTROYED)
    for version in versions:
        keys._set_version_state(version, KeyState.DESTROYED, actor=None, reason=reason, request=request, job=job)
    if job.version_id:
        return  # one version only: the key lives on
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
        "hsm_confirmation": "every object listed was destroyed and a search of the token for its CKA_ID found "
        "nothing, on the HSM the version was recorded on and on every HSM recorded as holding a copy of it",
    }


def register() -> None:
    register_job_handler(JobKind.GENERATE, JobHandler(run=_generate_run, complete=_generate_complete))
    register_job_handler(JobKind.ROTATE, JobHandler(run=_generate_run, complete=_generate_complete))
    register_job_handler(JobKind.DESTROY, JobHandler(run=_destroy_run, complete=_destroy_complete))
