"""Two final approvals at the same moment, on PostgreSQL, from two threads with their own database
connections: the row lock on the request lets exactly one execution through."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections

from approvals.models import ApprovalRequest, RequestState
from approvals.services import decide
from kms_console.lib.errors import ApplicationError
from lifecycle.models import Job, JobStatus, Key, KeyVersion
from lifecycle.states import KeyState
from tests.approvals.helpers import open_generation
from tests.conftest import fresh_otp, make_user, require_services
from tests.lifecycle.helpers import token_objects

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _postgres_only(db: Any) -> None:
    if connection.vendor != "postgresql":
        message = "row-lock races need PostgreSQL (set DATABASE_URL=postgres://...)"
        if require_services():
            pytest.fail(message)
        pytest.skip(message)


def race(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls at the same moment, each in its own thread with its own connection.

    Returns what each returned or raised, in order.
    """
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = call()
        except BaseException as exc:  # reported to the test, whatever it is
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a racing thread hung"
    return results


def approval(req: ApprovalRequest, approver: Any, clock: Any) -> Callable[[], Any]:
    code = fresh_otp(approver, clock)  # computed up front: the threads only decide
    return lambda: decide(request_id=req.pk, approver=approver, decision="approve", otp=code, digest=req.digest)


def assert_executed_once(req: ApprovalRequest) -> None:
    req.refresh_from_db()
    assert (req.state, req.execution_count) == (RequestState.EXECUTED, 1)
    assert Key.objects.count() == 1
    assert KeyVersion.objects.count() == 1
    job = Job.objects.get()
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)
    key = Key.objects.get()
    assert key.state == KeyState.ACTIVE
    assert token_objects(key.primary_version.cka_id) == ["secret_key"]


def test_two_final_approvals_at_the_same_moment_dispatch_exactly_one_execution(kms: Any, clock: Any) -> None:
    alice, bob, carol, dave = (make_user(name) for name in ("alice", "bob", "carol", "dave"))
    req = open_generation(alice, "raced")
    decide(request_id=req.pk, approver=bob, decision="approve", otp=fresh_otp(bob, clock), digest=req.digest)

    results = race(approval(req, carol, clock), approval(req, dave, clock))

    # One of them completed the quorum; the other found the request no longer pending.
    refusals = [r for r in results if isinstance(r, BaseException)]
    assert len(refusals) == 1, results
    assert isinstance(refusals[0], ApplicationError)
    assert refusals[0].code in {"request_approved", "request_executing", "request_executed"}
    assert req.decisions.count() == 2
    assert_executed_once(req)


def test_the_last_two_approvals_racing_both_count_and_the_step_runs_once(kms: Any, clock: Any) -> None:
    alice, bob, carol = (make_user(name) for name in ("alice", "bob", "carol"))
    req = open_generation(alice, "raced")

    results = race(approval(req, bob, clock), approval(req, carol, clock))

    assert not any(isinstance(r, BaseException) for r in results), results
    assert req.decisions.count() == 2
    assert_executed_once(req)
