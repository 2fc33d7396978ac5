"""HSM jobs: created in the service's transaction, dispatched on commit, run idempotently by a worker.

Running a job (`run_job`):
1. Claim it under a row lock: a finished job never runs again; a running job whose lease has not
   expired belongs to another delivery of the same task; a job whose request's execution window
   closed fails. Otherwise it becomes running and its attempt count goes up.
2. Do the HSM step outside any database transaction. Every step is idempotent by construction: the
   CKA_ID was chosen and stored before dispatch, so a re-run finds the object it already made.
3. Complete it under a row lock: apply the step's effects, mark it succeeded, and tell the
   dual-control engine that the request executed.
Transient HSM errors put the job back to queued and let Celery retry with backoff; permanent ones
fail the job (and its request) with a readable error.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Q
from django.utils import timezone

from approvals import services as approvals
from audit.services import record
from kms_console.lib.errors import ApplicationError

from ..hsm.base import HsmError
from ..models import Job, JobStatus
from ..models.jobs import FINAL_JOB_STATUSES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobHandler:
    # run(job) -> result: the HSM step. Idempotent; no database writes; the result holds no secrets.
    run: Callable[[Job], dict[str, Any]]
    # complete(job, result): database effects, inside the completing transaction (job locked).
    complete: Callable[[Job, dict[str, Any]], None]


_handlers: dict[str, JobHandler] = {}


def register_job_handler(kind: str, handler: JobHandler) -> None:
    _handlers[kind] = handler


class JobRetryLater(Exception):
    """A passing failure outside the HSM (the database): Celery retries the task."""


# A job that keeps failing in ways its handler cannot classify stops after this many attempts
# (counted from its last requeue), instead of running again every lease.
MAX_ATTEMPTS = 8


def lease_seconds() -> int:
    """How long a running job belongs to the delivery that claimed it."""
    return int(settings.CELERY_TASK_TIME_LIMIT) + 60


def create_job(
    *,
    kind: str,
    key: Any = None,
    version: Any = None,
    hsm: Any = None,
    request: Any = None,
    params: dict[str, Any] | None = None,
) -> Job:
    job = Job.objects.create(
        kind=kind,
        key=key,
        version=version,
        hsm=hsm,
        request=request,
        params=params or {},
        created_at=timezone.now(),
    )
    record(
        "job.queued",
        target_type="job",
        target_id=job.pk,
        details={
            "kind": kind,
            "key": str(key.pk) if key is not None else None,
            "request": str(request.pk) if request is not None else None,
        },
    )
    transaction.on_commit(lambda: dispatch(job.pk))
    return job


def dispatch(job_id: Any) -> None:
    """Send the job to the broker. If the broker is away the job stays queued for the requeue sweep."""
    from ..tasks import run_job

    try:
        run_job.apply_async(args=[str(job_id)])
    except Exception:
        logger.warning(
            "could not send job %s to the broker; the requeue sweep will send it again", job_id, exc_info=True
        )


def requeue(job: Job, *, actor: Any = None) -> Job:
    """A failed job goes back to the queue (a custodian retried its request). Caller holds no lock."""
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.status == JobStatus.SUCCEEDED:
            return locked
        if locked.status == JobStatus.FAILED:
            locked.status = JobStatus.QUEUED
            locked.finished_at = None
            # The attempt cap counts from here: a retried job gets a fresh set of attempts.
            locked.params = {**locked.params, "attempt_base": locked.attempts}
            locked.save(update_fields=["status", "finished_at", "params"])
            record("job.requeued", actor=actor, target_type="job", target_id=locked.pk, details={"kind": locked.kind})
        transaction.on_commit(lambda: dispatch(locked.pk))
    return locked


def _fail(job_id: Any, message: str) -> None:
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.status in FINAL_JOB_STATUSES:
            return
        job.status = JobStatus.FAILED
        job.error = message[:2000]
        job.finished_at = timezone.now()
        job.save(update_fields=["status", "error", "finished_at"])
        record(
            "job.failed",
            target_type="job",
            target_id=job.pk,
            details={"kind": job.kind, "error": job.error, "attempts": job.attempts},
        )
        if job.request_id:
            approvals.mark_failed(job.request_id, f"The {job.kind} job failed: {job.error}")


def _claim(job_id: Any) -> Job | None:
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None:
            logger.warning("job %s does not exist; nothing to do", job_id)
            return None
        if job.status in FINAL_JOB_STATUSES:
            return None  # succeeded or failed already: a redelivered task does nothing
        now = timezone.now()
        if (
            job.status == JobStatus.RUNNING
            and job.started_at
            and now - job.started_at < dt.timedelta(seconds=lease_seconds())
        ):
            return None  # another delivery of this task is running it right now
        if job.attempts - int(job.params.get("attempt_base", 0)) >= MAX_ATTEMPTS:
            give_up = f"gave up after {MAX_ATTEMPTS} attempts (see the job's error and the worker log)"
            claimed = None
        elif job.request_id and not approvals.execution_window_open(job.request_id):
            give_up = "the approved request's execution window closed before the job could start"
            claimed = None
        else:
            job.status = JobStatus.RUNNING
            job.attempts += 1
            job.started_at = now
            job.save(update_fields=["status", "attempts", "started_at"])
            record(
                "job.started", target_type="job", target_id=job.pk, details={"kind": job.kind, "attempt": job.attempts}
            )
            claimed = job
    if claimed is None:
        _fail(job_id, give_up)
    return claimed


def run_job(job_id: Any, *, final_attempt: bool = True) -> None:
    job = _claim(job_id)
    if job is None:
        return
    handler = _handlers.get(job.kind)
    if handler is None:
        _fail(job.pk, f"no handler for {job.kind} jobs")
        return
    try:
        result = handler.run(job)
    except HsmError as exc:
        if exc.transient and not final_attempt:
            with transaction.atomic():
                Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
                    status=JobStatus.QUEUED, error=f"attempt {job.attempts}: {exc.message} (will retry)"[:2000]
                )
                record(
                    "job.retrying",
                    target_type="job",
                    target_id=job.pk,
                    details={"kind": job.kind, "error": exc.message, "attempt": job.attempts},
                )
            raise
        _fail(job.pk, exc.message)
        return
    except ApplicationError as exc:
        _fail(job.pk, exc.message)
        return
    except DatabaseError:
        # The database went away mid-step: the step is idempotent, so leave the job to the lease
        # (requeue sweep) or Celery's retry rather than failing it.
        logger.exception("job %s: database error during its HSM step; it will run again", job.pk)
        raise JobRetryLater(f"job {job.pk} hit a database error") from None
    except Exception:
        # A bug, not a state of the world: fail the job (and its request) instead of re-running it
        # every lease. The traceback goes to the worker log, never into the job row.
        logger.exception("job %s failed with an unexpected error", job.pk)
        _fail(job.pk, "an internal error stopped the job; the worker log has the details")
        return
    _complete(job.pk, handler, result)


def _complete(job_id: Any, handler: JobHandler, result: dict[str, Any]) -> None:
    error = None
    with transaction.atomic():
        job = Job.objects.select_for_update(of=("self",)).select_related("request", "key", "version").get(pk=job_id)
        if job.status != JobStatus.RUNNING:
            return
        try:
            with transaction.atomic():
                handler.complete(job, result)
        except ApplicationError as exc:
            error = exc.message
        else:
            job.status = JobStatus.SUCCEEDED
            job.result = result
            job.error = ""
            job.finished_at = timezone.now()
            job.save(update_fields=["status", "result", "error", "finished_at"])
            record(
                "job.succeeded",
                target_type="job",
                target_id=job.pk,
                details={"kind": job.kind, "attempts": job.attempts, "result": result},
            )
            if job.request_id:
                approvals.mark_executed(job.request_id, {"job": str(job.pk)})
    if error is not None:
        _fail(job_id, error)


def requeue_stale(now: dt.datetime | None = None, *, older_than_seconds: int = 120) -> int:
    """Beat: send queued jobs again that no worker picked up (broker was away, message lost)."""
    now = now or timezone.now()
    # Queued for a while, or running past the lease (the worker died between claim and completion).
    stale = Job.objects.filter(
        Q(status=JobStatus.QUEUED, created_at__lt=now - dt.timedelta(seconds=older_than_seconds))
        | Q(status=JobStatus.RUNNING, started_at__lt=now - dt.timedelta(seconds=lease_seconds()))
    )
    count = 0
    for job_id in stale.values_list("pk", flat=True)[:500]:
        dispatch(job_id)
        count += 1
    return count
