"""HSM jobs: idempotent under redelivery and crashes, retried on transient HSM errors only, and
failing with a readable error that never holds the PIN. Faults are injected by wrapping the real
driver or the real job handler; the token is the session's real SoftHSM token."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import pytest
from pkcs11 import exceptions as p11e

from approvals.models import RequestState
from approvals.services import open_request
from audit.models import AuditEvent
from lifecycle.hsm import HsmOperationError, HsmTransientError, Pkcs11Backend
from lifecycle.models import Hsm, Job, JobKind, JobStatus, Key
from lifecycle.services import jobs
from lifecycle.states import KeyState
from lifecycle.tasks import run_job
from tests.conftest import approve
from tests.lifecycle.helpers import (
    ASYMMETRIC,
    KEY_TYPE_IDS,
    KEY_TYPES,
    generate_key,
    on_commit,
    token_objects,
)

pytestmark = pytest.mark.django_db


class SimulatedCrash(BaseException):
    """The worker process dies: not an error our code handles (hence BaseException)."""


def queued_generation(cast: Any, clock: Any, *, algorithm: str = "AES-256", usage: str = "encrypt_decrypt") -> Job:
    """An approved generation whose job is queued but not run (this test's transaction never commits)."""
    req = open_request(
        operation="generate",
        requester=cast.alice,
        justification="job tests",
        parameters={"name": "k", "algorithm": algorithm, "usage": usage},
    )
    approve(req, cast.bob, cast.carol, clock=clock)
    job = Job.objects.get(request=req)
    assert job.status == JobStatus.QUEUED
    return job


def job_events(job: Job, action: str) -> int:
    return AuditEvent.objects.filter(target_type="job", target_id=str(job.pk), action=action).count()


def test_a_task_delivered_twice_leaves_one_hsm_object_and_one_finished_job(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock)
    job = Job.objects.get(key=key)
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)

    run_job.apply(args=[str(job.pk)])  # the broker delivers the same task again
    jobs.run_job(job.pk)  # and once more

    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)
    assert Job.objects.filter(key=key).count() == 1
    assert token_objects(key.primary_version.cka_id) == ["secret_key"]
    assert job_events(job, "job.started") == 1
    assert job_events(job, "job.succeeded") == 1
    key.refresh_from_db()
    assert key.versions.count() == 1


def test_a_second_delivery_while_the_first_runs_does_nothing(cast: Any, clock: Any, monkeypatch: Any) -> None:
    job = queued_generation(cast, clock)
    real = jobs._handlers[JobKind.GENERATE]
    seen: list[str] = []

    def run_with_redelivery(job_row: Job) -> dict[str, Any]:
        # While this delivery holds the job, the broker hands the same task to another worker.
        jobs.run_job(job_row.pk)
        seen.append(Job.objects.get(pk=job_row.pk).status)
        return real.run(job_row)

    monkeypatch.setitem(
        jobs._handlers, JobKind.GENERATE, jobs.JobHandler(run=run_with_redelivery, complete=real.complete)
    )
    with on_commit():
        jobs.run_job(job.pk)
    job.refresh_from_db()
    assert seen == [JobStatus.RUNNING]
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)
    assert job_events(job, "job.started") == 1


@pytest.mark.parametrize(("algorithm", "usage"), KEY_TYPES, ids=KEY_TYPE_IDS)
def test_a_rerun_after_a_crash_between_the_hsm_call_and_the_commit_finds_the_object_it_made(
    cast: Any, clock: Any, monkeypatch: Any, algorithm: str, usage: str
) -> None:
    job = queued_generation(cast, clock, algorithm=algorithm, usage=usage)
    cka_id = job.version.cka_id
    real = jobs._handlers[JobKind.GENERATE]

    def crash_after_the_hsm_step(job_row: Job) -> dict[str, Any]:
        real.run(job_row)  # the object is made on the token...
        raise SimulatedCrash  # ...and the process dies before the database learns of it

    monkeypatch.setitem(
        jobs._handlers, JobKind.GENERATE, jobs.JobHandler(run=crash_after_the_hsm_step, complete=real.complete)
    )
    with pytest.raises(SimulatedCrash):
        jobs.run_job(job.pk)
    monkeypatch.setitem(jobs._handlers, JobKind.GENERATE, real)
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.RUNNING, 1)
    assert len(token_objects(cka_id)) == (2 if algorithm in ASYMMETRIC else 1)

    # Redelivered at once: the lease of the crashed delivery still holds, nothing happens.
    jobs.run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.RUNNING, 1)

    # Past the lease, the requeue sweep sends it again and the re-run finds the object.
    clock.advance(seconds=jobs.lease_seconds() + 1)
    with on_commit():
        assert jobs.requeue_stale(clock.now()) == 1
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 2)
    assert job.result["created"] is False  # found, not made again
    assert len(token_objects(cka_id)) == (2 if algorithm in ASYMMETRIC else 1)
    assert Job.objects.filter(key=job.key).count() == 1
    key = Key.objects.get(pk=job.key_id)
    assert key.state == KeyState.ACTIVE
    assert key.primary_version.kcv == job.result["kcv"]
    job.request.refresh_from_db()
    assert job.request.state == RequestState.EXECUTED


def test_a_transient_hsm_error_is_retried_and_the_job_succeeds(cast: Any, clock: Any, monkeypatch: Any) -> None:
    real = Pkcs11Backend.generate
    calls: list[int] = []

    def busy_once(self: Pkcs11Backend, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise HsmTransientError("token 'kms-test' is busy or failing (DeviceError)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Pkcs11Backend, "generate", busy_once)
    key = generate_key(cast.alice, cast.approvers, clock)

    job = Job.objects.get(key=key)
    assert len(calls) == 2
    assert (job.status, job.attempts, job.error) == (JobStatus.SUCCEEDED, 2, "")
    retry = AuditEvent.objects.get(target_id=str(job.pk), action="job.retrying")
    assert retry.details["error"] == "token 'kms-test' is busy or failing (DeviceError)"
    assert key.state == KeyState.ACTIVE
    assert token_objects(key.primary_version.cka_id) == ["secret_key"]


def test_a_transient_error_that_persists_fails_the_job_after_the_last_retry(
    cast: Any, clock: Any, monkeypatch: Any
) -> None:
    calls: list[int] = []

    def always_busy(self: Pkcs11Backend, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise HsmTransientError("token 'kms-test' is busy or failing (DeviceError)")

    monkeypatch.setattr(Pkcs11Backend, "generate", always_busy)
    with on_commit():
        req = open_request(
            operation="generate",
            requester=cast.alice,
            justification="j",
            parameters={"name": "k", "algorithm": "AES-256", "usage": "encrypt_decrypt"},
        )
        req = approve(req, cast.bob, cast.carol, clock=clock)

    job = Job.objects.get(request=req)
    assert len(calls) == run_job.max_retries + 1
    assert (job.status, job.attempts) == (JobStatus.FAILED, run_job.max_retries + 1)
    assert job.error == "token 'kms-test' is busy or failing (DeviceError)"
    req.refresh_from_db()
    assert req.state == RequestState.FAILED
    assert req.error == "The generate job failed: token 'kms-test' is busy or failing (DeviceError)"
    key = Key.objects.get(name="k")
    assert (key.state, key.primary_version) == (KeyState.PRE_ACTIVATION, None)


def test_a_permanent_hsm_error_fails_the_job_at_once_with_a_readable_error(
    cast: Any, clock: Any, monkeypatch: Any
) -> None:
    calls: list[int] = []

    def refuses(self: Pkcs11Backend, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise HsmOperationError("token 'kms-test' refused the operation (MechanismInvalid)")

    monkeypatch.setattr(Pkcs11Backend, "generate", refuses)
    with on_commit():
        req = open_request(
            operation="generate",
            requester=cast.alice,
            justification="j",
            parameters={"name": "k", "algorithm": "EC-P256", "usage": "sign_verify"},
        )
        req = approve(req, cast.bob, cast.carol, clock=clock)

    job = Job.objects.get(request=req)
    assert len(calls) == 1  # not retried
    assert (job.status, job.attempts) == (JobStatus.FAILED, 1)
    assert job.error == "token 'kms-test' refused the operation (MechanismInvalid)"
    req.refresh_from_db()
    assert req.state == RequestState.FAILED
    assert "refused the operation (MechanismInvalid)" in req.error
    assert not AuditEvent.objects.filter(target_id=str(job.pk), action="job.retrying").exists()


def test_the_pin_appears_nowhere_when_the_library_fails_with_it_in_its_message(
    cast: Any, clock: Any, monkeypatch: Any, caplog: Any, hsm_token: Any
) -> None:
    pin = os.environ["KMS_HSM_PIN"]
    assert pin == hsm_token.pin
    real_call = Pkcs11Backend._call

    def leaky_library(self: Pkcs11Backend, operation: Any) -> Any:
        def fail(state: Any) -> Any:
            # A library whose error text carries the PIN it was given: the driver must not pass it on.
            raise p11e.MechanismInvalid(f"C_GenerateKey failed; login pin was {pin}")

        return real_call(self, fail)

    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(Pkcs11Backend, "_call", leaky_library)
    with on_commit():
        req = open_request(
            operation="generate",
            requester=cast.alice,
            justification="j",
            parameters={"name": "k", "algorithm": "AES-256", "usage": "encrypt_decrypt"},
        )
        req = approve(req, cast.bob, cast.carol, clock=clock)
    monkeypatch.setattr(Pkcs11Backend, "_call", real_call)

    job = Job.objects.get(request=req)
    req.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error == "token 'kms-test' refused the operation (MechanismInvalid)"
    assert pin not in job.error
    assert pin not in req.error
    assert pin not in json.dumps(job.result)
    for event in AuditEvent.objects.all():
        assert pin not in json.dumps(event.details), event.action
    assert pin not in caplog.text
    for hsm in Hsm.objects.all():  # the database names where the PIN comes from, never the PIN
        assert pin not in json.dumps([hsm.module, hsm.token_label, hsm.pin_env, hsm.pin_file])


def test_a_finished_job_is_never_requeued_by_the_sweep(cast: Any, clock: Any) -> None:
    generate_key(cast.alice, cast.approvers, clock)
    clock.advance(hours=1)
    assert jobs.requeue_stale(clock.now()) == 0


def test_a_job_whose_execution_window_closed_fails_without_touching_the_hsm(
    cast: Any, clock: Any, monkeypatch: Any
) -> None:
    job = queued_generation(cast, clock)
    calls: list[int] = []
    monkeypatch.setattr(Pkcs11Backend, "generate", lambda *a, **k: calls.append(1))
    clock.advance(hours=24, seconds=1)  # execute_within_hours of the standard rule
    jobs.run_job(job.pk)
    job.refresh_from_db()
    assert calls == []
    assert job.status == JobStatus.FAILED
    assert "execution window closed" in job.error
    job.request.refresh_from_db()
    assert job.request.state == RequestState.FAILED


def test_a_bug_in_a_step_fails_the_job_once_instead_of_running_it_every_lease(
    cast: Any, clock: Any, monkeypatch: Any, caplog: Any
) -> None:
    from lifecycle.hsm import Pkcs11Backend
    from tests.approvals.helpers import open_generation
    from tests.conftest import approve
    from tests.lifecycle.helpers import on_commit

    def broken(self: Pkcs11Backend, *args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(Pkcs11Backend, "generate", broken)
    with on_commit():
        req = approve(open_generation(cast.alice, "buggy"), cast.bob, cast.carol, clock=clock)
    job = Job.objects.get(request=req)
    assert job.status == JobStatus.FAILED
    assert job.error == "an internal error stopped the job; the worker log has the details"
    assert "a bug" not in job.error  # tracebacks go to the log, not to the row
    req.refresh_from_db()
    assert req.state == "failed"


def test_a_job_gives_up_after_its_attempts_are_spent(cast: Any, clock: Any) -> None:
    from lifecycle.services import jobs as job_service
    from tests.lifecycle.helpers import generate_key

    key = generate_key(cast.alice, cast.approvers, clock)
    job = Job.objects.get(key=key)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, attempts=job_service.MAX_ATTEMPTS, started_at=None)
    job_service.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert f"gave up after {job_service.MAX_ATTEMPTS} attempts" in job.error
