"""End to end through a real Celery worker on Redis: an approved generation lands on the token."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.db import OperationalError

from approvals.models import RequestState
from approvals.services import decide, open_request
from lifecycle.hsm import default_backend
from lifecycle.models import Job, JobStatus, Key
from lifecycle.states import KeyState
from tests.conftest import make_user, otp_code

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OperationalError as exc:
            # SQLite's in-memory test database is shared with the worker thread through a shared
            # cache, whose table locks fail at once instead of waiting: poll again.
            if "locked" not in str(exc):
                raise
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the worker")


def test_an_approved_generation_runs_on_the_worker_and_the_key_is_on_the_token(kms: Any, celery_worker: Any) -> None:
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    req = open_request(
        operation="generate",
        requester=alice,
        justification="integration test",
        parameters={"name": "worker-key", "algorithm": "AES-256", "usage": "encrypt_decrypt"},
    )
    decide(request_id=req.pk, approver=bob, decision="approve", otp=otp_code(bob), digest=req.digest)
    decide(request_id=req.pk, approver=carol, decision="approve", otp=otp_code(carol), digest=req.digest)

    wait_for(lambda: Job.objects.filter(request=req, status=JobStatus.SUCCEEDED).exists())
    req.refresh_from_db()
    assert req.state == RequestState.EXECUTED
    key = Key.objects.get(name="worker-key")
    assert key.state == KeyState.ACTIVE
    version = key.primary_version
    assert version.kcv
    # The object is really on the token, under the CKA_ID the console recorded.
    assert default_backend().exists(version.cka_id_bytes)
    assert default_backend().key_check_value(version.cka_id_bytes, "AES-256") == version.kcv


def approve_with(req: Any, *approvers: Any) -> None:
    for approver in approvers:
        decide(request_id=req.pk, approver=approver, decision="approve", otp=otp_code(approver), digest=req.digest)


def test_every_hsm_step_of_the_lifecycle_runs_on_the_worker_and_shows_on_the_token(
    kms: Any, celery_worker: Any
) -> None:
    from lifecycle.models import DestructionCertificate
    from tests.lifecycle.helpers import make_policy, token_ids, token_objects

    make_policy("no-wait", destruction_wait_days=0)
    alice = make_user("alice")
    # One custodian per approval: a TOTP code may be used once per 30-second step, and time runs here.
    custodians = [make_user(name, {"custodian"}) for name in ("bob", "carol", "dave", "erik", "fay", "gus", "hal")]

    generation = open_request(
        operation="generate",
        requester=alice,
        justification="worker lifecycle",
        parameters={"name": "pair", "algorithm": "EC-P256", "usage": "sign_verify", "policy": "no-wait"},
    )
    approve_with(generation, custodians[0], custodians[1])
    wait_for(lambda: Job.objects.filter(request=generation, status=JobStatus.SUCCEEDED).exists())
    key = Key.objects.get(name="pair")
    v1 = key.primary_version
    assert token_objects(v1.cka_id) == ["private_key", "public_key"]

    rotation = open_request(operation="rotate", requester=alice, justification="rotate", target_id=str(key.pk))
    approve_with(rotation, custodians[2])
    wait_for(lambda: Job.objects.filter(request=rotation, status=JobStatus.SUCCEEDED).exists())
    key.refresh_from_db()
    v2 = key.primary_version
    assert v2.number == 2
    assert token_objects(v2.cka_id) == ["private_key", "public_key"]
    v1.refresh_from_db()
    assert v1.state == KeyState.DEACTIVATED

    destruction = open_request(
        operation="schedule_destruction", requester=alice, justification="retire it", target_id=str(key.pk)
    )
    approve_with(destruction, custodians[3], custodians[4])
    wait_for(lambda: Key.objects.filter(pk=key.pk, state=KeyState.DESTROYED).exists())
    assert not {v1.cka_id, v2.cka_id} & token_ids()  # both halves of both versions are gone
    certificate = DestructionCertificate.objects.get(key=key)
    assert [v["cka_id"] for v in certificate.body["versions"]] == [v1.cka_id, v2.cka_id]
    assert [d["approver"] for d in certificate.body["request"]["decisions"]] == ["erik", "fay"]


def test_a_task_the_broker_delivers_twice_runs_once_on_the_worker(kms: Any, celery_worker: Any) -> None:
    from lifecycle.tasks import run_job
    from tests.lifecycle.helpers import token_objects

    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    req = open_request(
        operation="generate",
        requester=alice,
        justification="redelivery",
        parameters={"name": "twice", "algorithm": "AES-256", "usage": "encrypt_decrypt"},
    )
    approve_with(req, bob, carol)
    wait_for(lambda: Job.objects.filter(request=req, status=JobStatus.SUCCEEDED).exists())
    job = Job.objects.get(request=req)
    run_job.delay(str(job.pk))
    run_job.delay(str(job.pk))
    time.sleep(2)  # let the worker take both deliveries
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)
    assert token_objects(job.version.cka_id) == ["secret_key"]
