"""Celery tasks of the audit trail: beat signs the chain head at intervals (settings.CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

from celery import shared_task

from .context import acting
from .services import sign_checkpoint as sign_head


@shared_task(ignore_result=True)
def sign_checkpoint() -> int | None:
    """Sign the chain head; the sequence number signed, or None when nothing happened since the last one.

    Idempotent: a second run with no new events signs nothing. A run that cannot reach the HSM or
    finds the chain broken raises (and the refusal is on record); the next beat tick tries again.
    """
    with acting(None, via="beat"):
        checkpoint = sign_head()
    return checkpoint.seq if checkpoint is not None else None
