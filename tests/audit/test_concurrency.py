"""Issue 5, item 1: eight writers appending 100 events each get 800 contiguous sequence numbers.

Each thread has its own database connection. On PostgreSQL the chain head's row lock orders the
appends; on SQLite (a file database in the tests, as in an installation) writers queue for the
database lock. Either way no number is skipped or given twice, and the chain verifies.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connections, transaction

from audit import services
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 8
PER_THREAD = 100
TOTAL = THREADS * PER_THREAD


class NoCheckpoints:
    def verify(self, message: bytes, signature: bytes, key_id: str) -> bool:
        raise AssertionError("these runs sign no checkpoint")


def append_concurrently(threads: int, per_thread: int) -> list[str]:
    """Start `threads` threads at once, each recording `per_thread` events. Returns the errors raised."""
    barrier = threading.Barrier(threads)
    errors: list[str] = []

    def work(number: int) -> None:
        try:
            barrier.wait(timeout=30)
            for index in range(per_thread):
                services.record("test.concurrent", target_type="test", details={"thread": number, "i": index})
        except BaseException as exc:  # reported to the test, whatever it is
            errors.append(repr(exc))
        finally:
            connections.close_all()

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    if any(worker.is_alive() for worker in workers):
        errors.append("a writer thread hung")
    return errors


@pytest.mark.slow
def test_eight_threads_writing_100_events_each_get_800_contiguous_sequence_numbers() -> None:
    assert append_concurrently(THREADS, PER_THREAD) == []
    # No gap, no duplicate, every writer got all its events through.
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == list(range(1, TOTAL + 1))
    per_thread = [0] * THREADS
    for details in AuditEvent.objects.values_list("details", flat=True):
        per_thread[details["thread"]] += 1
    assert per_thread == [PER_THREAD] * THREADS
    result = services.verify_chain(signer=NoCheckpoints())
    assert result.ok, result.problems
    assert (result.checked, result.head_seq) == (TOTAL, TOTAL)


def test_events_of_a_rolled_back_transaction_leave_no_gap() -> None:
    first = services.record("test.before")
    with pytest.raises(RuntimeError), transaction.atomic():
        services.record("test.rolled_back")
        raise RuntimeError("the change this event described failed")
    after = services.record("test.after")
    assert after.seq == first.seq + 1
    assert not AuditEvent.objects.filter(action="test.rolled_back").exists()
    assert after.prev_hash == first.hash
