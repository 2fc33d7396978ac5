"""End to end through a real Celery worker on Redis: an approved generation lands on the token."""

from __future__ import annotations

import time
from typing import Any

import pytest

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
        if predicate():
            return
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
