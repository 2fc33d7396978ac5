"""Celery tasks: thin, ids only, late acks, retries only for transient HSM errors."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from audit.context import acting

from .backups import tasks as backup_tasks  # noqa: F401  (autodiscovery reads this module only)
from .hsm.base import HsmTransientError
from .services import jobs
from .sweep import sweep


@shared_task(
    bind=True,
    acks_late=True,
    ignore_result=True,
    autoretry_for=(HsmTransientError, jobs.JobRetryLater),
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=5,
)
def run_job(self: Any, job_id: str) -> None:
    """Run one HSM job. Safe to deliver twice: see lifecycle.services.jobs.run_job."""
    with acting(None, via="worker"):
        jobs.run_job(job_id, final_attempt=self.request.retries >= self.max_retries)


@shared_task(ignore_result=True)
def lifecycle_sweep() -> dict[str, int]:
    with acting(None, via="beat"):
        return sweep()


@shared_task(ignore_result=True)
def requeue_stale_jobs() -> int:
    with acting(None, via="beat"):
        return jobs.requeue_stale()
