"""One lock order for every writer (audit.locking): the audit chain head, then the rows.

Without it, a transaction that records an event (holding the chain head) and then locks a key
deadlocks on PostgreSQL with one that locked the key first and then records.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from audit.services import record
from lifecycle.models import Key
from lifecycle.states import KeyState
from tests.conftest import make_user, require_services

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _postgres_only(db: Any) -> None:
    if connection.vendor != "postgresql":
        message = "lock-order deadlocks need PostgreSQL (set DATABASE_URL=postgres://...)"
        if require_services():
            pytest.fail(message)
        pytest.skip(message)


def test_record_then_lock_and_lock_then_record_do_not_deadlock(kms: Any) -> None:
    owner = make_user("alice")
    now = timezone.now()
    key = Key.objects.create(
        name="contended",
        algorithm="AES-256",
        usage="encrypt_decrypt",
        policy=kms.policy,
        hsm=kms.hsm,
        owner=owner,
        state=KeyState.ACTIVE,
        state_changed_at=now,
        created_at=now,
    )
    both_started = threading.Barrier(2)
    errors: list[BaseException] = []

    def record_then_lock() -> None:
        with transaction.atomic():
            record("test.first", target_type="key", target_id=key.pk)  # holds the chain head
            with contextlib.suppress(threading.BrokenBarrierError):
                both_started.wait(timeout=1)  # the other thread is blocked on the head: times out
            Key.objects.select_for_update().get(pk=key.pk)

    def lock_then_record() -> None:
        with transaction.atomic():
            Key.objects.select_for_update().get(pk=key.pk)  # takes the chain head first, then the key
            with contextlib.suppress(threading.BrokenBarrierError):
                both_started.wait(timeout=1)
            record("test.second", target_type="key", target_id=key.pk)

    def run(work: Any) -> None:
        try:
            work()
        except BaseException as exc:  # reported to the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(work,)) for work in (record_then_lock, lock_then_record)]
    threads[0].start()
    threads[1].start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []  # no "deadlock detected"
