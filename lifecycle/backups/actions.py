"""backup, escrow, restore, export and import as dual-control actions (registered at start-up).

Each `prepare` validates and canonicalises what an approver will see (the digest binds it) and
names the quorum rule of the key's policy; each `execute` re-checks the rules (things may have
changed while the request waited) and starts the work: a job, or for a restore the window in which
custodians enter their shares.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from typing import Any

from django.urls import reverse
from django.utils.dateparse import parse_datetime

from approvals.models import ApprovalRequest, RequestState
from approvals.registry import Action, Outcome, Prepared, Progress, register
from kms_console.lib.errors import ApplicationError, Conflict
from kms_console.lib.roles import Role

from ..actions import KEY_ADMIN, _extra_none, _generate_prepare, _get_key, _requeue_or, invalid
from ..hsm import get_algorithm
from ..models import Backup, Hsm, Job, JobKind, JobStatus, Key, Policy
from ..policies import quorum_for
from ..selectors import uuid_or_none
from ..services import jobs, keys
from ..services.jobs import create_job
from .backup import check_backup, start_backup
from .common import version_of
from .distribution import check_export, import_key_id, load_recipient_key
from .escrow import check_kek, clean_custodians, start_escrow
from .restore import check_restore, restore_target, start_restore

ESCROW_REQUESTERS = frozenset({Role.KEY_ADMIN, Role.SECURITY_OFFICER})
KCV_RE = re.compile(r"^[0-9a-f]{6}$|^[0-9a-f]{64}$")
MAX_BLOB = 4096


def _backup_prepare(requester: Any, target_id: str, p: dict[str, Any]) -> Prepared:
    _extra_none(p, "backup", {"version"})
    key = _get_key(target_id)
    keys.check_operation_allowed(key, "backup")
    version = version_of(key, p.get("version"))
    ceremony = check_backup(key, version)
    kek = ceremony.kek_version
    return Prepared(
        target_type="key",
        target_id=str(key.pk),
        target_label=key.name,
        parameters={
            "key": key.name,
            "version": version.number,
            "kcv": version.kcv,
            "kek": kek.key.name,
            "kek_version": kek.number,
            "kek_kcv": kek.kcv,
            "escrow": str(ceremony.pk),
        },
        quorum=quorum_for(key.policy.current, "backup"),
    )


def _backup_execute(req: ApprovalRequest) -> Outcome:
    def start() -> Job:
        key = keys.lock_key(req.target_id)
        keys.check_operation_allowed(key, "backup")
        version = version_of(key, req.parameters["version"])
        return start_backup(key=key, version=version, request=req)

    return _requeue_or(req, start)


def _backup_describe(req: ApprovalRequest) -> str:
    p = req.parameters
    return (
        f"Back up version {p['version']} of key '{p['key']}' (key check value {p['kcv']}): the HSM wraps it under the "
        f"backup KEK '{p['kek']}' v{p['kek_version']} (AES key wrap, RFC 3394), tests that the copy restores, and "
        "the console keeps the wrapped copy. The key never leaves the HSM in clear."
    )


# --- Escrow ---------------------------------------------------------------------------------------


def _escrow_prepare(requester: Any, target_id: str, p: dict[str, Any]) -> Prepared:
    _extra_none(p, "escrow", {"custodians", "threshold"})
    key = _get_key(target_id)
    version = check_kek(key)
    users, threshold = clean_custodians(p.get("custodians"), p.get("threshold"))
    return Prepared(
        target_type="key",
        target_id=str(key.pk),
        target_label=key.name,
        parameters={
            "key": key.name,
            "kek_version": version.number,
            "kcv": version.kcv,
            "custodians": [u.get_username() for u in users],
            "threshold": threshold,
            "shares": len(users),
        },
        quorum=quorum_for(key.policy.current, "escrow"),
    )


def _escrow_execute(req: ApprovalRequest) -> Outcome:
    def start() -> Job:
        key = keys.lock_key(req.target_id)
        if key.primary_version is None or key.primary_version.number != req.parameters["kek_version"]:
            raise Conflict(f"Key {key.name} was rotated since the request was opened; hold the ceremony again.")
        ceremony = start_escrow(
            key=key, holders=req.parameters["custodians"], threshold=req.parameters["threshold"], request=req
        )
        return ceremony.job

    return _requeue_or(req, start)


def _escrow_describe(req: ApprovalRequest) -> str:
    p = req.parameters
    return (
        f"Escrow the backup KEK '{p['key']}' v{p['kek_version']} (check value {p['kcv']}) under split knowledge: the "
        f"HSM wraps it under a fresh recovery key, which is split so that any {p['threshold']} of these "
        f"{p['shares']} custodians can recover it: {', '.join(p['custodians'])}. Each takes their own share once; "
        "the console keeps only fingerprints. Once every holder has taken their share, an earlier escrow of this "
        "key stops working (restores still collecting its shares end); until then it stays the one that recovers "
        "the KEK."
    )


# --- Restore --------------------------------------------------------------------------------------


def _get_backup(key_id: str, backup_id: Any) -> Backup:
    try:
        pk = uuid.UUID(str(backup_id))
    except ValueError:
        raise invalid("backup", "must be the id of a backup of this key") from None
    backup = (
        Backup.objects.select_related("version__key", "version__hsm", "kek_version")
        .filter(pk=pk, version__key_id=key_id)
        .first()
    )
    if backup is None:
        raise invalid("backup", "must be the id of a backup of this key")
    return backup


def _restore_prepare(requester: Any, target_id: str, p: dict[str, Any]) -> Prepared:
    _extra_none(p, "restore", {"backup", "hsm"})
    key = _get_key(target_id)
    keys.check_operation_allowed(key, "restore")
    backup = _get_backup(str(key.pk), p.get("backup"))
    ceremony = check_restore(backup)
    hsm = restore_target(backup, p.get("hsm"))
    return Prepared(
        target_type="key",
        target_id=str(key.pk),
        target_label=key.name,
        parameters={
            "key": key.name,
            "backup": str(backup.pk),
            "version": backup.version.number,
            "kcv": backup.kcv,
            "backup_created_at": backup.created_at.isoformat(),
            "escrow": str(ceremony.pk),
            "threshold": ceremony.threshold,
            "hsm": hsm.name,
        },
        quorum=quorum_for(key.policy.current, "restore"),
    )


def _restore_execute(req: ApprovalRequest) -> Outcome:
    key = keys.lock_key(req.target_id)
    keys.check_operation_allowed(key, "restore")
    backup = _get_backup(str(key.pk), req.parameters["backup"])
    hsm = Hsm.objects.filter(name=req.parameters["hsm"], retired_at__isnull=True).first()
    if hsm is None:
        raise ApplicationError(f"HSM {req.parameters['hsm']} is no longer registered.")
    restore = start_restore(backup=backup, hsm=hsm, request=req)
    return Outcome(result={"restore": str(restore.pk)}, pending=True)


def _restore_progress(req: ApprovalRequest) -> Progress | None:
    """An approved restore waits for M share holders to enter their shares before the worker runs."""
    from ..models import Restore, RestoreState

    restore_id = (req.result or {}).get("restore")
    restore_pk = uuid_or_none(restore_id)
    restore = Restore.objects.select_related("ceremony").filter(pk=restore_pk).first() if restore_pk else None
    if restore is None or restore.state != RestoreState.COLLECTING:
        return None
    entered = restore.entered_shares.count()
    threshold = restore.ceremony.threshold
    return Progress(
        title="Approved — waiting for the custodians' shares",
        text=(
            f"The restore runs once {threshold} share holders have entered their shares ({entered} so far). "
            f"The window closes at {restore.collect_until:%Y-%m-%d %H:%M} UTC; after that nothing is restored."
        ),
        url=reverse("backups:restore", args=[restore.pk]),
        link_text="Enter a share",
    )


def _restore_describe(req: ApprovalRequest) -> str:
    p = req.parameters
    return (
        f"Restore version {p['version']} of key '{p['key']}' from its backup of {p['backup_created_at'][:16].replace('T', ' ')} "
        f"UTC into HSM '{p['hsm']}'. After approval, {p['threshold']} custodians holding shares of the escrowed KEK "
        f"must enter them; the worker then recovers the KEK, unwraps the backup and checks its key check value "
        f"({p['kcv']})."
    )


# --- Export ---------------------------------------------------------------------------------------


def _export_prepare(requester: Any, target_id: str, p: dict[str, Any]) -> Prepared:
    _extra_none(p, "export", {"recipient", "recipient_public_key", "version"})
    key = _get_key(target_id)
    keys.check_operation_allowed(key, "export")
    version = version_of(key, p.get("version"))
    check_export(key, version)
    recipient = p.get("recipient")
    if not isinstance(recipient, str) or not 1 <= len(recipient.strip()) <= 200:
        raise invalid("recipient", "name who receives the key (1-200 characters)")
    pem, fingerprint = load_recipient_key(p.get("recipient_public_key"))
    return Prepared(
        target_type="key",
        target_id=str(key.pk),
        target_label=key.name,
        parameters={
            "key": key.name,
            "version": version.number,
            "kcv": version.kcv,
            "recipient": recipient.strip(),
            "recipient_fingerprint": fingerprint,
            "recipient_public_key": pem,
        },
        quorum=quorum_for(key.policy.current, "export"),
    )


def _export_execute(req: ApprovalRequest) -> Outcome:
    def start() -> Job:
        key = keys.lock_key(req.target_id)
        keys.check_operation_allowed(key, "export")
        version = version_of(key, req.parameters["version"])
        check_export(key, version)
        return create_job(
            kind=JobKind.EXPORT,
            key=key,
            version=version,
            hsm=version.hsm,
            request=req,
            params={"export_id": str(uuid.uuid4())},
        )

    return _requeue_or(req, start)


def _export_describe(req: ApprovalRequest) -> str:
    p = req.parameters
    return (
        f"Export version {p['version']} of key '{p['key']}' (key check value {p['kcv']}) to {p['recipient']}: wrapped "
        f"under a fresh transport key that only the holder of the RSA key with SHA-256 fingerprint "
        f"{p['recipient_fingerprint']} can open (RSA-OAEP with SHA-256, then AES key wrap)."
    )


# --- Import ---------------------------------------------------------------------------------------

IMPORT_FIELDS = {"encrypted_transport_key", "wrapped_key", "expected_kcv"}


def _blob(p: dict[str, Any], field: str) -> str:
    value = p.get(field)
    if not isinstance(value, str) or not value.strip():
        raise invalid(field, "must be base64 text")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(field, "must be base64 text") from None
    if not 16 <= len(raw) <= MAX_BLOB:
        raise invalid(field, "has an impossible length")
    return base64.b64encode(raw).decode()


def _import_prepare(requester: Any, target_id: str, p: dict[str, Any]) -> Prepared:
    base = {name: value for name, value in p.items() if name not in IMPORT_FIELDS}
    generated = _generate_prepare(requester, "", base)
    params = dict(generated.parameters)
    if get_algorithm(params["algorithm"]).asymmetric:
        raise invalid("algorithm", "only symmetric keys (AES, HMAC) are imported")
    expected = p.get("expected_kcv")
    if not isinstance(expected, str) or not KCV_RE.match(expected.strip().lower()):
        raise invalid("expected_kcv", "must be the key check value you computed: 6 hex digits (AES) or 64 (HMAC)")
    if ApprovalRequest.objects.filter(
        operation="import", state=RequestState.PENDING, parameters__name=params["name"]
    ).exists():
        raise Conflict(
            f"A request to import a key named {params['name']!r} is waiting already.", code="request_pending"
        )
    hsm = Hsm.objects.get(name=params["hsm"])
    import_id = import_key_id(hsm)  # 409 until setup made it; an HSM failure answers 503
    policy = Policy.objects.get(name=params["policy"])
    params.update(
        import_key=import_id.hex(),
        encrypted_transport_key=_blob(p, "encrypted_transport_key"),
        wrapped_key=_blob(p, "wrapped_key"),
        expected_kcv=expected.strip().lower(),
    )
    return Prepared(
        target_type="key",
        target_id="",
        target_label=params["name"],
        parameters=params,
        quorum=quorum_for(policy.current, "import"),
    )


def _import_execute(req: ApprovalRequest) -> Outcome:
    existing = Key.objects.filter(created_by_request=req).first()
    if existing is not None:  # a retry of a failed import: run the same job (same CKA_ID) again
        job = jobs.requeue(Job.objects.filter(request=req).order_by("created_at").first())
        return Outcome(
            result={"key_id": str(existing.pk), "job": str(job.pk)}, pending=job.status != JobStatus.SUCCEEDED
        )
    p = req.parameters
    hsm = Hsm.objects.filter(name=p["hsm"], retired_at__isnull=True).first()
    if hsm is None:
        raise ApplicationError(f"HSM {p['hsm']} is no longer registered.")
    key = keys.key_create(
        name=p["name"],
        algorithm=p["algorithm"],
        usage=p["usage"],
        policy=Policy.objects.get(name=p["policy"]),
        hsm=hsm,
        owner=req.requester,
        description=p["description"],
        tags=p["tags"],
        activate_at=parse_datetime(p["activate_at"]) if p["activate_at"] else None,
        request=req,
        job_kind=JobKind.IMPORT,
    )
    job = Job.objects.get(request=req)
    return Outcome(result={"key_id": str(key.pk), "job": str(job.pk)}, pending=True)


def _import_describe(req: ApprovalRequest) -> str:
    p = req.parameters
    return (
        f"Import a {p['algorithm']} key named '{p['name']}' for {p['usage'].replace('_', '/')} under policy "
        f"{p['policy']} v{p['policy_version']} into HSM '{p['hsm']}'. The importer states its key check value is "
        f"{p['expected_kcv']}: confirm this with them through another channel before approving. The worker checks "
        "it and refuses the key if it differs."
    )


def register_all() -> None:
    register(Action("backup", "Back up", KEY_ADMIN, _backup_prepare, _backup_execute, _backup_describe))
    register(
        Action("escrow", "Escrow the backup KEK", ESCROW_REQUESTERS, _escrow_prepare, _escrow_execute, _escrow_describe)
    )
    register(
        Action(
            "restore",
            "Restore from backup",
            KEY_ADMIN,
            _restore_prepare,
            _restore_execute,
            _restore_describe,
            progress=_restore_progress,
        )
    )
    register(Action("export", "Export wrapped", KEY_ADMIN, _export_prepare, _export_execute, _export_describe))
    register(Action("import", "Import a key", KEY_ADMIN, _import_prepare, _import_execute, _import_describe))
