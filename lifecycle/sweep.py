"""What beat does to keys every minute (lifecycle.tasks.lifecycle_sweep).

1. Activate keys whose `activate_at` has come (their generation request approved that date).
2. Rotate keys whose policy asks for automatic rotation, before the originator period ends.
3. Deactivate versions past their originator-usage period (and the key with its primary version).
4. Start the destruction of keys whose waiting period is over.
Each object is handled in its own transaction under its row lock, so one bad key cannot stop the
sweep and two beat processes cannot act twice.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db import transaction
from django.utils import timezone

from kms_console.lib.errors import ApplicationError

from .models import Job, Key, KeyVersion
from .models.jobs import ACTIVE_JOB_STATUSES
from .services import keys
from .states import KeyState

logger = logging.getLogger(__name__)

# Rotate this long before the originator period ends when the policy gives no rotation period.
ROTATE_AHEAD = dt.timedelta(days=7)


def _each(ids, work, label: str) -> int:
    done = 0
    for pk in ids:
        try:
            with transaction.atomic():
                if work(pk):
                    done += 1
        except ApplicationError as exc:
            logger.warning("sweep could not %s %s: %s", label, pk, exc.message)
    return done


def activate_due(now: dt.datetime) -> int:
    ids = Key.objects.filter(
        state=KeyState.PRE_ACTIVATION, activate_at__lte=now, primary_version__generated_at__isnull=False
    ).values_list("pk", flat=True)

    def work(pk) -> bool:
        key = keys.lock_key(pk)
        if (
            key.state != KeyState.PRE_ACTIVATION
            or key.activate_at is None
            or key.activate_at > now
            or key.destroy_after
        ):
            return False
        keys.activate(key, actor=None, reason="activation date reached", request=key.created_by_request)
        return True

    return _each(list(ids), work, "activate")


def rotate_due(now: dt.datetime) -> int:
    candidates = Key.objects.filter(
        state=KeyState.ACTIVE,
        destroy_after__isnull=True,
        policy__versions__is_current=True,
        policy__versions__auto_rotate=True,
    ).select_related("primary_version", "policy")

    def due(key: Key) -> bool:
        version = key.primary_version
        if version is None or version.activated_at is None:
            return False
        period = key.policy.current.rotation_period_days
        if period:
            return now >= version.activated_at + dt.timedelta(days=period)
        return version.originator_until is not None and now >= version.originator_until - ROTATE_AHEAD

    ids = [key.pk for key in candidates if due(key)]

    def work(pk) -> bool:
        key = keys.lock_key(pk)
        if key.state != KeyState.ACTIVE or Job.objects.filter(key=key, status__in=ACTIVE_JOB_STATUSES).exists():
            return False
        keys.rotate(key, actor=None, reason=f"scheduled rotation under policy {key.policy.current.ref}")
        return True

    return _each(ids, work, "rotate")


def deactivate_expired(now: dt.datetime) -> int:
    ids = KeyVersion.objects.filter(state=KeyState.ACTIVE, originator_until__lte=now).values_list("pk", flat=True)

    def work(pk) -> bool:
        version = KeyVersion.objects.select_for_update(of=("self",)).select_related("key").get(pk=pk)
        key = keys.lock_key(version.key_id)
        if version.state != KeyState.ACTIVE:
            return False
        reason = "originator-usage period ended"
        keys._set_version_state(version, KeyState.DEACTIVATED, actor=None, reason=reason)
        if key.primary_version_id == version.pk and key.state == KeyState.ACTIVE:
            keys._set_key_state(key, KeyState.DEACTIVATED, actor=None, reason=reason)
        return True

    return _each(list(ids), work, "deactivate")


def destroy_due(now: dt.datetime) -> int:
    ids = Key.objects.filter(destroy_after__lte=now).exclude(state=KeyState.DESTROYED).values_list("pk", flat=True)

    def work(pk) -> bool:
        key = keys.lock_key(pk)
        if key.destroy_after is None or key.destroy_after > now or key.state == KeyState.DESTROYED:
            return False
        return keys.start_destruction(key) is not None

    return _each(list(ids), work, "destroy")


def sweep(now: dt.datetime | None = None) -> dict[str, int]:
    now = now or timezone.now()
    return {
        "activated": activate_due(now),
        "rotated": rotate_due(now),
        "deactivated": deactivate_expired(now),
        "destructions_started": destroy_due(now),
    }
