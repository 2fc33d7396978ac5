"""Beat tasks of backups: daily restore tests of a sample, and closing share windows that ran out.

Imported by lifecycle/tasks.py so that Celery's autodiscovery (which reads `<app>/tasks.py`) finds them.
"""

from __future__ import annotations

import logging

from celery import shared_task

from audit.context import acting

from . import restore
from .backup import verify_sample
from .escrow import expire_ceremonies

logger = logging.getLogger(__name__)


def close_windows() -> int:
    """Restores whose share window ran out (or whose job failed for good) end and wipe their entered
    shares; escrow ceremonies whose shares were not all taken in time fail and wipe the sealed ones.

    Each sweep runs even when the other fails (the failure goes to the worker log and the beat's next
    run tries again): a broken restore must not keep sealed escrow shares waiting, nor the reverse."""
    closed = 0
    for sweep in (restore.expire_restores, expire_ceremonies):
        try:
            closed += sweep()
        except Exception:
            logger.exception("the %s sweep failed; the next beat run tries again", sweep.__name__)
    return closed


@shared_task(ignore_result=True)
def verify_backups() -> dict[str, int]:
    """Restore-test the least recently verified backups into session objects (KCV must match)."""
    with acting(None, via="beat"):
        counts = verify_sample()
        counts["restores_closed"] = close_windows()
        return counts


@shared_task(ignore_result=True)
def expire_restores() -> int:
    """Close share windows that ran out: restores (and their entered shares) and escrow hand-offs
    (the shares still sealed). Runs every few minutes (CELERY_BEAT_SCHEDULE "backups-expire-restores")."""
    with acting(None, via="beat"):
        return close_windows()
