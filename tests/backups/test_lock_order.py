"""Backups, escrow and restores lock in the console's one order (audit.locking): chain head, then rows.

Each test runs two real service calls at once, each in its own thread with its own PostgreSQL
connection, and holds each of them at the point where, before the backup models took the chain head
first, one held a row the other needed while waiting for the chain head the other held: PostgreSQL
then answered "deadlock detected" to one of them. The pause is a barrier with a timeout: when the
lock order is right, the second thread queues on the chain head, the first one's wait times out and
it carries on, and both finish.

The pairs are the ones the security review named: a custodian entering a share while the restore
job completes; a share hand-off while a newer ceremony supersedes the old one; destruction of
backups while a share is entered.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import DatabaseError, connection, connections

from accounts import services as accounts_services
from kms_console.lib.errors import ApplicationError
from lifecycle.backups import destruction, restore
from lifecycle.backups import jobs as backup_jobs
from lifecycle.backups.destruction import destroy_backups
from lifecycle.backups.escrow import retrieve_share
from lifecycle.backups.restore import enter_share
from lifecycle.hsm import default_backend
from lifecycle.models import CeremonyState, EscrowCeremony, Job, JobStatus, Restore, RestoreState
from lifecycle.services.jobs import run_job
from tests.backups.conftest import back_up, enter, hold_escrow, jobs_held_back, open_restore, take_shares
from tests.conftest import fresh_otp, require_services
from tests.lifecycle.helpers import generate_key

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

# Long enough for the other thread to reach its own pause (it may do HSM work first), short enough
# that the thread which does not meet it (the lock order is right) goes on soon.
PAUSE_SECONDS = 5


@pytest.fixture(autouse=True)
def _postgres_only(db: Any) -> None:
    if connection.vendor != "postgresql":
        message = "lock-order deadlocks need PostgreSQL (set DATABASE_URL=postgres://...)"
        if require_services():
            pytest.fail(message)
        pytest.skip(message)


def pause_at(monkeypatch: Any, owner: Any, name: str, barrier: threading.Barrier, *, after: bool = False) -> None:
    """Make `owner.name` wait once at `barrier` (before it runs, or after with after=True)."""
    original = getattr(owner, name)
    paused: list[bool] = []

    def wait_once() -> None:
        if not paused:
            paused.append(True)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=PAUSE_SECONDS)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if after:
            result = original(*args, **kwargs)
            wait_once()
            return result
        wait_once()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def run_together(*works: Callable[[], Any]) -> list[BaseException]:
    """Run each callable in its own thread (own database connection); return what they raised.

    A refusal (ApplicationError) is a legitimate outcome of the race and is not returned.
    """
    errors: list[BaseException] = []

    def run(work: Callable[[], Any]) -> None:
        try:
            work()
        except ApplicationError:
            pass
        except BaseException as exc:  # reported to the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(work,)) for work in works]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def no_deadlock(errors: list[BaseException]) -> None:
    assert [repr(e) for e in errors] == []
    assert not any(isinstance(e, DatabaseError) and "deadlock" in str(e) for e in errors)


@pytest.fixture
def world(cast: SimpleNamespace, clock: Any, kek: Any) -> SimpleNamespace:
    ceremony = hold_escrow(kek, cast, clock)  # 2 of 3: bob, carol and dave
    shares = take_shares(ceremony, clock)
    data = generate_key(cast.alice, cast.approvers, clock, name="payments")
    backup = back_up(data, cast, clock)
    default_backend().destroy(data.primary_version.cka_id_bytes)
    return SimpleNamespace(kek=kek, ceremony=ceremony, shares=shares, key=data, backup=backup)


def test_a_share_entered_while_the_restore_job_completes(
    cast: SimpleNamespace, clock: Any, world: SimpleNamespace, monkeypatch: Any
) -> None:
    req = open_restore(world.key, world.backup, cast, clock)
    waiting = Restore.objects.get(request=req)
    enter(waiting.pk, cast.bob, world.shares["bob"], clock)
    with jobs_held_back(monkeypatch):
        enter(waiting.pk, cast.carol, world.shares["carol"], clock)  # the M-th share queues the job
    job = Job.objects.get(kind="restore", request=req)
    assert job.status == JobStatus.QUEUED
    dave_code = fresh_otp(cast.dave, clock)

    barrier = threading.Barrier(2)
    # dave holds the restore row (his late share is refused) while the job holds the chain head.
    pause_at(monkeypatch, restore, "_refuse_share", barrier)
    pause_at(monkeypatch, backup_jobs, "record_restore", barrier)
    errors = run_together(
        lambda: enter_share(restore_id=waiting.pk, user=cast.dave, share_text=world.shares["dave"], otp=dave_code),
        lambda: run_job(job.pk),
    )

    no_deadlock(errors)
    waiting.refresh_from_db()
    assert waiting.state == RestoreState.RESTORED
    assert Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED


def test_a_share_hand_off_while_a_newer_ceremony_supersedes_the_old_one(
    cast: SimpleNamespace, clock: Any, kek: Any, monkeypatch: Any
) -> None:
    older = hold_escrow(kek, cast, clock)
    newer = hold_escrow(kek, cast, clock)
    for holder in (cast.bob, cast.dave):
        share = newer.shares.get(holder=holder)
        retrieve_share(share_id=share.pk, user=holder, otp=fresh_otp(holder, clock))
    bob_old = older.shares.get(holder=cast.bob)
    bob_code = fresh_otp(cast.bob, clock)
    carol_last = newer.shares.get(holder=cast.carol)
    carol_code = fresh_otp(cast.carol, clock)

    barrier = threading.Barrier(2)
    # bob holds his old share's row (before his code is checked) while carol takes the last share of
    # the newer ceremony, which completes it and wipes the older ceremony's sealed shares.
    pause_at(monkeypatch, accounts_services, "verify_user_otp", barrier)
    errors = run_together(
        lambda: retrieve_share(share_id=bob_old.pk, user=cast.bob, otp=bob_code),
        lambda: retrieve_share(share_id=carol_last.pk, user=cast.carol, otp=carol_code),
    )

    no_deadlock(errors)
    older.refresh_from_db()
    assert older.state == CeremonyState.SUPERSEDED and older.wrapped_kek == ""
    assert set(older.shares.values_list("sealed", flat=True)) == {""}
    assert EscrowCeremony.objects.get(pk=newer.pk).state == CeremonyState.COMPLETE


def test_destruction_of_backups_while_a_share_is_entered(
    cast: SimpleNamespace, clock: Any, world: SimpleNamespace, monkeypatch: Any
) -> None:
    req = open_restore(world.key, world.backup, cast, clock)
    waiting = Restore.objects.get(request=req)
    bob_code = fresh_otp(cast.bob, clock)
    version = world.key.primary_version

    barrier = threading.Barrier(2)
    # bob holds the restore row (before his code is checked) while destruction, having recorded the
    # first wiped backup (so holding the chain head), goes on to close the restores of the version.
    pause_at(monkeypatch, accounts_services, "verify_user_otp", barrier)
    pause_at(monkeypatch, destruction, "record", barrier, after=True)
    errors = run_together(
        lambda: enter_share(restore_id=waiting.pk, user=cast.bob, share_text=world.shares["bob"], otp=bob_code),
        lambda: destroy_backups(world.key, [version]),
    )

    no_deadlock(errors)
    world.backup.refresh_from_db()
    waiting.refresh_from_db()
    assert world.backup.wrapped == "" and world.backup.destroyed_at is not None
    assert waiting.state == RestoreState.EXPIRED
    assert set(waiting.entered_shares.values_list("sealed", flat=True)) <= {""}
