"""Escrow of the backup KEK under split knowledge: the ceremony, the hand-off of shares, custody gaps.

The backup KEK is the key whose primary version has a live escrow ceremony (decided here: the
ceremony is what designates it, so there is never a backup under a KEK nobody can recover). A
ceremony wraps the KEK under a fresh recovery key inside the HSM and splits the recovery key M-of-N
(`shares`); each share exists in clear only in the browser of its holder, once, at hand-off, and in
the worker's memory during a restore. Everywhere else it is sealed under an HSM envelope key or
reduced to a fingerprint.

Sealed shares wait for their holders only until the ceremony's `retrieve_by` (the setting
KMS_ESCROW_SHARE_RETRIEVAL_HOURS after the shares were made, 72 hours by default): whoever holds the
database and the HSM PIN could unseal them, so split knowledge holds only once each holder has taken
theirs. Past the deadline the shares still sealed are wiped and the ceremony fails (`expire_ceremony`,
from the beat or on the next attempt to take a share); a new ceremony is needed.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from accounts import services as accounts
from approvals.models import ApprovalRequest
from audit.services import record
from kms_console.lib.errors import ApplicationError, Conflict, Forbidden, NotFound
from kms_console.lib.roles import Role

from ..hsm.base import USAGE_WRAP_UNWRAP
from ..models import CeremonyState, EscrowCeremony, EscrowShare, Job, JobKind, Key, KeyVersion
from ..models.backups import LIVE_CEREMONY_STATES
from ..services.jobs import create_job
from ..states import KeyState
from . import hsm_ops, shares

logger = logging.getLogger(__name__)

KEK_ALGORITHM = "AES-256"
DEFAULT_RETRIEVAL_HOURS = 72


def retrieval_window() -> dt.timedelta:
    """How long the holders have to take their shares once the ceremony has made them."""
    return dt.timedelta(hours=getattr(settings, "KMS_ESCROW_SHARE_RETRIEVAL_HOURS", DEFAULT_RETRIEVAL_HOURS))


# --- Which key is the backup KEK ------------------------------------------------------------------


def live_ceremonies() -> QuerySet[EscrowCeremony]:
    return EscrowCeremony.objects.filter(state__in=LIVE_CEREMONY_STATES)


# The ceremony that recovers a KEK: the newest complete one (every holder has their share), else
# the newest still handing its shares off. A newer ceremony supersedes the older ones only once it
# is complete, so while it hands off, the older complete one stays the one restores use.
_RECOVERY_ORDER = (F("completed_at").desc(nulls_last=True), "-created_at")


def current_ceremony() -> EscrowCeremony | None:
    """The live ceremony of the backup KEK: its key is active and the escrowed version is its primary."""
    return (
        live_ceremonies()
        .filter(kek_version__key__state=KeyState.ACTIVE, kek_version__key__primary_version=F("kek_version"))
        .select_related("kek_version__key", "kek_version__hsm")
        .order_by(*_RECOVERY_ORDER)
        .first()
    )


def ceremony_for(kek_version: KeyVersion) -> EscrowCeremony | None:
    """The live ceremony that can recover this KEK version (see _RECOVERY_ORDER)."""
    return live_ceremonies().filter(kek_version=kek_version).order_by(*_RECOVERY_ORDER).first()


def is_kek(key: Key) -> bool:
    return EscrowCeremony.objects.filter(kek_version__key=key).exists()


# --- The ceremony ---------------------------------------------------------------------------------


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
    ceremony.retrieve_by = now + retrieval_window()
    ceremony.save(update_fields=["wrapped_kek", "recovery_fingerprint", "state", "distributed_at", "retrieve_by"])
    record(
        "escrow.distributing",
        target_type="key",
        target_id=ceremony.kek_version.key_id,
        details={
            "ceremony": str(ceremony.pk),
            "threshold": ceremony.threshold,
            "fingerprints": {str(i): by_index[i]["fingerprint"] for i in sorted(by_index)},
            "retrieve_by": ceremony.retrieve_by.isoformat(),
        },
    )
    return ceremony


def supersede_older(ceremony: EscrowCeremony, now: dt.datetime) -> list[str]:
    """A ceremony became complete: the live ceremonies of the same KEK made before it end (superseded).

    Not earlier: until every holder of the new ceremony has their share, the older one is what can
    recover the KEK, and a new ceremony that fails (a share not taken in time) leaves it standing.
    The caller holds the new ceremony's row lock."""
    superseded = []
    for older in (
        live_ceremonies()
        .select_for_update()
        .filter(kek_version__key_id=ceremony.kek_version.key_id, created_at__lt=ceremony.created_at)
        .exclude(pk=ceremony.pk)
    ):
        end_ceremony(older, CeremonyState.SUPERSEDED, now, details={"by": str(ceremony.pk)})
        superseded.append(str(older.pk))
    return superseded


def end_ceremony(
    ceremony: EscrowCeremony, state: str, now: dt.datetime, *, details: dict[str, Any] | None = None
) -> None:
    """End a ceremony (superseded, destroyed, failed): wipe what could open the KEK, its wrapped form
    and any share not yet handed off, and end the restores still collecting its shares (they can
    never run now). The caller holds the ceremony's row lock."""
    from .restore import end_restores_of_ended_ceremony  # restore builds on this module

    ceremony.state = state
    ceremony.wrapped_kek = ""
    ceremony.ended_at = now
    ceremony.save(update_fields=["state", "wrapped_kek", "ended_at"])
    ceremony.shares.exclude(sealed="").update(sealed="")
    record(
        f"escrow.{state}",
        target_type="key",
        target_id=ceremony.kek_version.key_id,
        details={"ceremony": str(ceremony.pk), **(details or {})},
    )
    end_restores_of_ended_ceremony(ceremony, now)


def is_overdue(ceremony: EscrowCeremony, now: dt.datetime) -> bool:
    """Shares are still waiting for their holders and the deadline to take them has passed."""
    return (
        ceremony.state == CeremonyState.DISTRIBUTING and ceremony.retrieve_by is not None and now > ceremony.retrieve_by
    )


def expire_ceremony(ceremony: EscrowCeremony, now: dt.datetime) -> None:
    """A holder did not take their share in time: wipe the shares still sealed and the wrapped KEK,
    and fail the ceremony (audited, naming who did not take theirs). The caller holds its row lock."""
    waiting = list(ceremony.shares.filter(retrieved_at__isnull=True).select_related("holder").order_by("index"))
    end_ceremony(
        ceremony,
        CeremonyState.FAILED,
        now,
        details={
            "reason": "shares not taken in time",
            "retrieve_by": ceremony.retrieve_by.isoformat() if ceremony.retrieve_by else None,
            "not_taken": [{"index": s.index, "holder": s.holder.get_username()} for s in waiting],
        },
    )


def expire_ceremonies(now: dt.datetime | None = None) -> int:
    """Beat: fail the ceremonies whose shares were not all taken before their deadline."""
    now = now or timezone.now()
    count = 0
    overdue = EscrowCeremony.objects.filter(state=CeremonyState.DISTRIBUTING, retrieve_by__lt=now)
    for pk in list(overdue.values_list("pk", flat=True)):
        try:
            with transaction.atomic():
                ceremony = EscrowCeremony.objects.select_for_update().select_related("kek_version").get(pk=pk)
                if is_overdue(ceremony, now):
                    expire_ceremony(ceremony, now)
                    count += 1
        except DatabaseError:
            # One ceremony's trouble (a lock timeout, a lost connection) must not keep the others'
            # sealed shares waiting; the next beat run tries it again.
            logger.exception("could not fail the overdue escrow ceremony %s; trying again next run", pk)
    return count


def retrieve_share(*, share_id: Any, user: Any, otp: str | None) -> str:
    """Hand a share to its holder, exactly once. Returns the share's text.

    Under a row lock on the share: the caller must hold it, it must not have been handed off, its
    ceremony must be live and inside its deadline (a late attempt fails the ceremony now), and the
    caller's TOTP code must verify. The share is unsealed, checked against its fingerprint, and wiped
    from the database in the same transaction that records the hand-off; refusals are audited and
    raised after that transaction commits. An HSM failure (HsmError) rolls everything back.
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
        now = timezone.now()
        if share.holder_id != user.pk:
            refusal = Forbidden("This share is held by another custodian.", code="not_share_holder")
        elif is_overdue(ceremony, now):
            ceremony = EscrowCeremony.objects.select_for_update().select_related("kek_version").get(pk=ceremony.pk)
            if is_overdue(ceremony, now):
                expire_ceremony(ceremony, now)
            refusal = Conflict(
                "The deadline to take the shares of this ceremony has passed; the shares not taken were wiped and "
                "the ceremony failed. Ask for a new escrow ceremony.",
                code="share_deadline_passed",
            )
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
                superseded = supersede_older(ceremony, now)
                record(
                    "escrow.complete",
                    target_type="key",
                    target_id=ceremony.kek_version.key_id,
                    details={"ceremony": str(ceremony.pk), "superseded": superseded},
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
