"""Beat tasks of backups: daily restore tests of a sample, and closing share windows that ran out.

Imported by lifecycle/tasks.py so that Celery's autodiscovery (which reads `<app>/tasks.py`) finds them.
"""

from __future__ import annotations

from celery import shared_task

from audit.context import acting

from . import restore
from .backup import verify_sample


@shared_task(ignore_result=True)
def verify_backups() -> dict[str, int]:
    """Restore-test the least recently verified backups into session objects (KCV must match)."""
    with acting(None, via="beat"):
        counts = verify_sample()
        counts["restores_closed"] = restore.expire_restores()
        return counts


@shared_task(ignore_result=True)
def expire_restores() -> int:
    """Close share windows that ran out and end restores whose job failed for good."""
    with acting(None, via="beat"):
        return restore.expire_restores()
