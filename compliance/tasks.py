"""Celery tasks of compliance: the nightly snapshot (beat: settings.CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

from celery import shared_task

from audit.context import acting

from . import services


@shared_task(ignore_result=True)
def take_snapshot() -> int:
    """Take today's snapshot unless it exists (idempotent per UTC day). Returns the snapshot's id."""
    with acting(None, via="beat"):
        snapshot, _ = services.take_snapshot()
        return snapshot.pk
