"""Key lifecycle services: one function per operation, each in one transaction with its audit event.

These are what an approved request executes (lifecycle.actions) and what the beat sweep calls; no
view, serializer or command calls them directly for a sensitive step. Services that touch the HSM
create a Job (whose id is the idempotency key) and dispatch its task when the transaction commits.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import record
from kms_console.lib.errors import ApplicationError, Conflict, NotFound

from ..cryptoperiods import default_for
from ..hsm.base import get_algorithm
from ..models import Hsm, Job, JobKind, JobStatus, Key, KeyTransition, KeyVersion, Policy, PolicyVersion
from ..models.jobs import ACTIVE_JOB_STATUSES
from ..states import OPERATION_FROM_STATES, TRANSITION_NUMBERS, KeyState, can_transition
from .jobs import create_job, requeue

CKA_ID_BYTES = 16
RETRY_FAILED_DESTRUCTION_AFTER = dt.timedelta(hours=1)


def new_cka_id() -> str:
    return secrets.token_hex(CKA_ID_BYTES)


def lock_key(key_id: Any) -> Key:
    """The key, locked for the rest of the transaction (lock first, then check, then change)."""
    key = Key.objects.select_for_update().filter(pk=key_id).first()
    if key is None:
        raise NotFound("No such key.")
    return key


def _actor_name(actor: Any) -> str:
    return actor.get_username() if actor is not None and getattr(actor, "is_authenticated", False) else "system"


def record_transition(
    key: Key,
    to_state: str,
    *,
    version: KeyVersion | None = None,
    from_state: str | None,
    actor: Any,
    reason: str,
    request: Any = None,
    job: Job | None = None,
) -> KeyTransition:
    now = timezone.now()
    transition = KeyTransition.objects.create(
        key=key,
        version=version,
        from_state=from_state or "",
        to_state=to_state,
        nist_transition=TRANSITION_NUMBERS.get((from_state or None, to_state)),
        at=now,
        actor=actor if actor is not None and getattr(actor, "is_authenticated", False) else None,
        actor_name=_actor_name(actor),
        reason=reason[:2000],
        request=request,
        job=job,
    )
    record(
        "key.version_state_changed" if version is not None else "key.state_changed",
        actor=actor,
        target_type="key",
        target_id=key.pk,
        details={
            "key": key.name,
            "version": version.number if version is not None else None,
            "from": from_state or None,
            "to": to_state,
            "nist_transition": transition.nist_transition,
            "request": str(request.pk) if request is not None else None,
            "job": str(job.pk) if job is not None else None,
            "reason": reason[:500],
        },
    )
    return transition


def _set_key_state(
    key: Key, to_state: str, *, actor: Any, reason: str, request: Any = None, job: Job | None = None
) -> None:
    if not can_transition(key.state, to_state):
        raise Conflict(
            f"Key {key.name} is {key.state}; NIST SP 800-57 does not allow {key.state} -> {to_state}.",
            code="transition_not_allowed",
        )
    from_state = key.state
    key.state = to_state
    key.state_changed_at = timezone.now()
    key.save(update_fields=["state", "state_changed_at"])
    record_transition(key, to_state, from_state=from_state, actor=actor, reason=reason, request=request, job=job)


def _set_version_state(
    version: KeyVersion, to_state: str, *, actor: Any, reason: str, request: Any = None, job: Job | None = None
) -> None:
    if version.state == to_state:
        return
    if not can_transition(version.state, to_state):
        raise Conflict(
            f"Version {version.number} of {version.key.name} is {version.state}; it cannot become {to_state}.",
            code="transition_not_allowed",
        )
    from_state = version.state
    now = timezone.now()
    version.state = to_state
    stamp = {
        KeyState.ACTIVE: "activated_at",
        KeyState.SUSPENDED: "suspended_at",
        KeyState.DEACTIVATED: "deactivated_at",
        KeyState.COMPROMISED: "compromised_at",
        KeyState.DESTROYED: "destroyed_at",
    }.get(to_state)
    fields = ["state"]
    if stamp:
        setattr(version, stamp, now)
        fields.append(stamp)
    version.save(update_fields=fields)
    record_transition(
        version.key,
        to_state,
        version=version,
        from_state=from_state,
        actor=actor,
        reason=reason,
        request=request,
        job=job,
    )


def check_operation_allowed(key: Key, operation: str) -> None:
    """Refuse an operation the key's state (or a pending destruction) does not allow.

    Nothing is done to a key whose first version is still being made on the HSM: the worker's
    completion would otherwise record the key's generation after the change, or fail to activate
    a key that was scheduled for destruction meanwhile. (A key whose generation failed may still be
    compromised or scheduled for destruction.)
    """
    if key.primary_version_id is None and _has_active_job(key):
        raise Conflict(
            f"Key {key.name} is still being generated on the HSM; wait for that to finish.", code="not_generated"
        )
    allowed = OPERATION_FROM_STATES.get(operation)
    if allowed is not None and key.state not in allowed:
        raise Conflict(
            f"Key {key.name} is {key.state.replace('_', '-')}; '{operation.replace('_', ' ')}' needs it to be "
            f"{' or '.join(sorted(s.replace('_', '-') for s in allowed))}.",
            code="state_conflict",
        )
    if operation == "cancel_destruction":
        if key.destroy_after is None:
            raise Conflict(f"Key {key.name} is not scheduled for destruction.", code="not_scheduled")
        if _destruction_started(key):
            raise Conflict(
                f"The destruction of {key.name} has started on the HSM; it can no longer be cancelled.",
                code="destruction_started",
            )
    elif key.destroy_after is not None and operation not in {"compromise", "schedule_destruction"}:
        raise Conflict(
            f"Key {key.name} is scheduled for destruction on {key.destroy_after:%Y-%m-%d %H:%M} UTC; cancel that first.",
            code="destruction_scheduled",
        )
    if operation == "schedule_destruction" and key.destroy_after is not None:
        raise Conflict(f"Key {key.name} is already scheduled for destruction.", code="destruction_scheduled")
    if operation in {"rotate", "backup", "export", "destroy"} and _has_active_job(key):
        raise Conflict(f"Key {key.name} has an HSM job in progress; wait for it to finish.", code="job_in_progress")


def _has_active_job(key: Key) -> bool:
    return Job.objects.filter(key=key, status__in=ACTIVE_JOB_STATUSES).exists()


def _destruction_started(key: Key) -> bool:
    return Job.objects.filter(key=key, kind=JobKind.DESTROY, status__in=ACTIVE_JOB_STATUSES).exists()


def periods_for(key: Key, policy_version: PolicyVersion) -> tuple[int, int]:
    default = default_for(get_algorithm(key.algorithm).family, key.usage)
    originator = policy_version.originator_period_days or default.originator_days
    recipient = policy_version.recipient_period_days or max(default.recipient_days, originator)
    return originator, max(recipient, originator)


def _start_periods(key: Key, version: KeyVersion, now: dt.datetime) -> None:
    originator, recipient = periods_for(key, key.policy.current)
    version.originator_until = now + dt.timedelta(days=originator)
    version.recipient_until = now + dt.timedelta(days=recipient)
    version.save(update_fields=["originator_until", "recipient_until"])


# --- Generation -----------------------------------------------------------------------------------


def key_create(
    *,
    name: str,
    algorithm: str,
    usage: str,
    policy: Policy,
    hsm: Hsm,
    owner: Any,
    description: str = "",
    tags: list[str] | None = None,
    activate_at: dt.datetime | None = None,
    request: Any = None,
    job_kind: str = JobKind.GENERATE,
) -> Key:
    """Create the key (pre-activation) and version 1 with its CKA_ID, and queue the HSM generation.

    `job_kind` IMPORT queues an import (lifecycle.backups) instead: the same key and version rows,
    whose HSM object is unwrapped from the importer's material rather than generated.
    """
    now = timezone.now()
    policy_version = policy.current
    try:
        with transaction.atomic():
            key = Key.objects.create(
                name=name,
                description=description,
                algorithm=algorithm,
                usage=usage,
                policy=policy,
                hsm=hsm,
                owner=owner,
                tags=sorted(set(tags or [])),
                state=KeyState.PRE_ACTIVATION,
                state_changed_at=now,
                activate_at=activate_at,
                created_at=now,
                created_by_request=request,
            )
    except IntegrityError:
        raise Conflict(f"A key named {name!r} exists already.", code="name_taken") from None
    version = KeyVersion.objects.create(
        key=key,
        number=1,
        state=KeyState.PRE_ACTIVATION,
        hsm=hsm,
        cka_id=new_cka_id(),
        extractable=_extractable(policy_version),
        created_at=now,
    )
    record(
        "key.created",
        actor=owner,
        target_type="key",
        target_id=key.pk,
        details={
            "key": name,
            "algorithm": algorithm,
            "usage": usage,
            "policy": policy_version.ref,
            "hsm": hsm.name,
            "cka_id": version.cka_id,
            "activate_at": activate_at.isoformat() if activate_at else None,
            "request": str(request.pk) if request is not None else None,
        },
    )
    create_job(kind=job_kind, key=key, version=version, hsm=hsm, request=request)
    return key


def _extractable(policy_version: PolicyVersion) -> bool:
    """Versions are extractable (wrappable, never readable) only where backup or export may need it."""
    return policy_version.backup != "forbidden" or policy_version.exportable


def complete_generation(job: Job, *, kcv: str, public_key_pem: str) -> None:
    """The worker made the HSM object for `job.version`: record it; activate when due. Locked by caller."""
    version = KeyVersion.objects.select_for_update().get(pk=job.version_id)
    key = lock_key(version.key_id)
    now = timezone.now()
    version.kcv = kcv
    version.public_key_pem = public_key_pem
    version.generated_at = now
    version.save(update_fields=["kcv", "public_key_pem", "generated_at"])
    reason = job.request.justification if job.request_id else "generated"
    if version.number == 1:  # the key itself comes into being with its first version (transition 1)
        record_transition(
            key, KeyState.PRE_ACTIVATION, from_state=None, actor=None, reason=reason, request=job.request, job=job
        )
    record_transition(
        key,
        KeyState.PRE_ACTIVATION,
        version=version,
        from_state=None,
        actor=None,
        reason=reason,
        request=job.request,
        job=job,
    )
    if job.kind == JobKind.ROTATE:
        _promote_rotated_version(key, version, job)
    elif version.number == 1:
        key.primary_version = version
        key.save(update_fields=["primary_version"])
        if (
            key.activate_at is not None
            and key.activate_at <= now
            and key.state == KeyState.PRE_ACTIVATION
            and key.destroy_after is None  # a key waiting for destruction is never activated
        ):
            activate(key, actor=None, reason="activation date reached", request=job.request, job=job)


# --- State changes --------------------------------------------------------------------------------


def activate(key: Key, *, actor: Any, reason: str, request: Any = None, job: Job | None = None) -> Key:
    """pre-activation -> active (transition 4): starts the cryptoperiod of the primary version."""
    check_operation_allowed(key, "activate")
    version = key.primary_version
    if version is None or version.generated_at is None:
        raise Conflict(
            f"Key {key.name} is still being generated on the HSM; activate it once that finished.", code="not_generated"
        )
    now = timezone.now()
    _set_key_state(key, KeyState.ACTIVE, actor=actor, reason=reason, request=request, job=job)
    _set_version_state(version, KeyState.ACTIVE, actor=actor, reason=reason, request=request, job=job)
    _start_periods(key, version, now)
    return key


def suspend(key: Key, *, actor: Any, reason: str, request: Any = None) -> Key:
    """active -> suspended (transition 7): nothing may use the key until it is resumed."""
    check_operation_allowed(key, "suspend")
    _set_key_state(key, KeyState.SUSPENDED, actor=actor, reason=reason, request=request)
    return key


def resume(key: Key, *, actor: Any, reason: str, request: Any = None) -> Key:
    """suspended -> active (transition 10), only while the primary version's originator period lasts."""
    check_operation_allowed(key, "resume")
    version = key.primary_version
    if version is not None and version.originator_until and version.originator_until <= timezone.now():
        raise Conflict(
            f"Key {key.name}'s originator-usage period ended on {version.originator_until:%Y-%m-%d}; it can be "
            "deactivated, not resumed.",
            code="cryptoperiod_over",
        )
    _set_key_state(key, KeyState.ACTIVE, actor=actor, reason=reason, request=request)
    return key


def deactivate(key: Key, *, actor: Any, reason: str, request: Any = None) -> Key:
    """active|suspended -> deactivated (transitions 8, 12): may still decrypt and verify."""
    check_operation_allowed(key, "deactivate")
    _set_key_state(key, KeyState.DEACTIVATED, actor=actor, reason=reason, request=request)
    for version in key.versions.select_for_update().filter(state=KeyState.ACTIVE):
        _set_version_state(version, KeyState.DEACTIVATED, actor=actor, reason=reason, request=request)
    return key


def compromise(key: Key, *, actor: Any, reason: str, request: Any = None) -> Key:
    """-> compromised (transitions 3, 6, 11, 13): every live version with it; all use stops."""
    check_operation_allowed(key, "compromise")
    _set_key_state(key, KeyState.COMPROMISED, actor=actor, reason=reason, request=request)
    for version in key.versions.select_for_update().exclude(state__in=[KeyState.DESTROYED, KeyState.COMPROMISED]):
        _set_version_state(version, KeyState.COMPROMISED, actor=actor, reason=reason, request=request)
    record(
        "key.revocation_notice",
        actor=actor,
        target_type="key",
        target_id=key.pk,
        details={"key": key.name, "reason": reason[:500], "request": str(request.pk) if request is not None else None},
    )
    return key


def grant_process_exception(key: Key, *, until: dt.datetime, actor: Any, reason: str, request: Any = None) -> Key:
    """Let a compromised key decrypt/verify until `until` (an approved, time-boxed exception)."""
    if key.state != KeyState.COMPROMISED:
        raise Conflict("A processing exception applies to compromised keys only.", code="state_conflict")
    if until <= timezone.now():
        raise ApplicationError("The exception must end in the future.", code="invalid_until")
    key.process_exception_until = until
    key.save(update_fields=["process_exception_until"])
    record(
        "key.process_exception_granted",
        actor=actor,
        target_type="key",
        target_id=key.pk,
        details={
            "key": key.name,
            "until": until.isoformat(),
            "request": str(request.pk) if request is not None else None,
        },
    )
    return key


# --- Rotation -------------------------------------------------------------------------------------


def rotate(key: Key, *, actor: Any, reason: str, request: Any = None) -> Job:
    """Queue a new version; when the HSM made it, it becomes primary and the old one deactivated."""
    check_operation_allowed(key, "rotate")
    number = (key.versions.order_by("-number").values_list("number", flat=True).first() or 0) + 1
    version = KeyVersion.objects.create(
        key=key,
        number=number,
        state=KeyState.PRE_ACTIVATION,
        hsm=key.hsm,
        cka_id=new_cka_id(),
        extractable=_extractable(key.policy.current),
        created_at=timezone.now(),
    )
    record(
        "key.rotation_started",
        actor=actor,
        target_type="key",
        target_id=key.pk,
        details={"key": key.name, "version": number, "cka_id": version.cka_id, "reason": reason[:500]},
    )
    return create_job(kind=JobKind.ROTATE, key=key, version=version, hsm=key.hsm, request=request)


def _promote_rotated_version(key: Key, version: KeyVersion, job: Job) -> None:
    reason = job.request.justification if job.request_id else "scheduled rotation"
    actor = None
    old = key.primary_version
    if key.state != KeyState.ACTIVE:
        # The key changed state while the worker ran (suspended, compromised): keep the new version
        # in pre-activation; it becomes usable only through an explicit decision.
        record(
            "key.rotation_parked",
            target_type="key",
            target_id=key.pk,
            details={"key": key.name, "version": version.number, "key_state": key.state},
        )
        return
    now = timezone.now()
    _set_version_state(version, KeyState.ACTIVE, actor=actor, reason=reason, request=job.request, job=job)
    _start_periods(key, version, now)
    key.primary_version = version
    key.save(update_fields=["primary_version"])
    if old is not None and old.state == KeyState.ACTIVE:
        _set_version_state(
            old,
            KeyState.DEACTIVATED,
            actor=actor,
            reason=f"replaced by version {version.number}",
            request=job.request,
            job=job,
        )


# --- Destruction ----------------------------------------------------------------------------------


def schedule_destruction(key: Key, *, actor: Any, reason: str, request: Any = None) -> Key:
    """Set `destroy_after` from the policy's waiting period; with 0 days, destroy right away."""
    check_operation_allowed(key, "schedule_destruction")
    wait_days = key.policy.current.destruction_wait_days
    now = timezone.now()
    key.destroy_after = now + dt.timedelta(days=wait_days)
    key.destruction_request = request
    key.save(update_fields=["destroy_after", "destruction_request"])
    record(
        "key.destruction_scheduled",
        actor=actor,
        target_type="key",
        target_id=key.pk,
        details={
            "key": key.name,
            "destroy_after": key.destroy_after.isoformat(),
            "wait_days": wait_days,
            "request": str(request.pk) if request is not None else None,
        },
    )
    if wait_days == 0:
        start_destruction(key)
    return key


def cancel_destruction(key: Key, *, actor: Any, reason: str, request: Any = None) -> Key:
    check_operation_allowed(key, "cancel_destruction")  # refuses too once the destroy job is in progress
    scheduled = key.destroy_after
    key.destroy_after = None
    key.destruction_request = None
    key.save(update_fields=["destroy_after", "destruction_request"])
    record(
        "key.destruction_cancelled",
        actor=actor,
        target_type="key",
        target_id=key.pk,
        details={
            "key": key.name,
            "was_scheduled_for": scheduled.isoformat() if scheduled else None,
            "request": str(request.pk) if request is not None else None,
        },
    )
    return key


def start_destruction(key: Key) -> Job:
    """Queue the destroy job of a key whose waiting period is over.

    There is one destroy job per key: a failed one is sent again at most once an hour (the sweep
    calls this every minute), never duplicated.
    """
    existing = Job.objects.filter(key=key, kind=JobKind.DESTROY, version__isnull=True).order_by("-created_at").first()
    if existing is None:
        return create_job(kind=JobKind.DESTROY, key=key, hsm=key.hsm, request=key.destruction_request)
    if (
        existing.status == JobStatus.FAILED
        and existing.finished_at
        and timezone.now() - existing.finished_at > RETRY_FAILED_DESTRUCTION_AFTER
    ):
        return requeue(existing)
    return existing
