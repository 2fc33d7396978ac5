"""Issue 5, item 3: the database itself refuses to change or remove audit events and checkpoints.

Through the ORM (`save()`, `update()`, `delete()`, queryset `delete()`) and through raw SQL, on
PostgreSQL and SQLite alike; and the chain head can only move forward one event at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction

from audit import services
from audit.models import AuditEvent, ChainHead, Checkpoint
from tests.audit.helpers import add_events

pytestmark = pytest.mark.django_db


def refused(change: Callable[[], Any]) -> str:
    """Run a change that the database must refuse; returns the error text. The savepoint keeps the
    test's transaction usable after the error (PostgreSQL aborts a transaction on any error)."""
    with pytest.raises(DatabaseError) as excinfo, transaction.atomic():
        change()
    return str(excinfo.value)


def raw(sql: str, params: list[Any] | None = None) -> Callable[[], None]:
    def run() -> None:
        with connection.cursor() as cursor:
            cursor.execute(sql, params or [])

    return run


@pytest.fixture
def trail(kms: Any) -> list[AuditEvent]:
    events = add_events(3)
    services.sign_checkpoint()
    return events


def assert_untouched(before: list[dict[str, Any]]) -> None:
    assert list(AuditEvent.objects.order_by("seq").values()) == before


def snapshot() -> list[dict[str, Any]]:
    return list(AuditEvent.objects.order_by("seq").values())


def test_saving_a_changed_event_is_refused(trail: list[AuditEvent]) -> None:
    before = snapshot()
    event = AuditEvent.objects.get(seq=trail[0].seq)
    event.details = {"n": "changed"}
    assert "append-only" in refused(event.save)
    assert_untouched(before)


def test_queryset_update_is_refused(trail: list[AuditEvent]) -> None:
    before = snapshot()
    assert "append-only" in refused(lambda: AuditEvent.objects.filter(seq=trail[1].seq).update(actor="mallory"))
    assert "append-only" in refused(lambda: AuditEvent.objects.update(action="nothing.happened"))
    assert_untouched(before)


def test_deleting_an_event_is_refused(trail: list[AuditEvent]) -> None:
    before = snapshot()
    event = AuditEvent.objects.get(seq=trail[2].seq)
    assert "append-only" in refused(event.delete)
    assert "append-only" in refused(lambda: AuditEvent.objects.filter(seq__gte=trail[0].seq).delete())
    assert "append-only" in refused(lambda: AuditEvent.objects.all().delete())
    assert_untouched(before)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_auditevent SET details = '{}' WHERE seq = %s",
        "UPDATE audit_auditevent SET hash = prev_hash",
        "DELETE FROM audit_auditevent WHERE seq = %s",
        "DELETE FROM audit_auditevent",
    ],
)
def test_raw_sql_update_and_delete_of_events_are_refused(trail: list[AuditEvent], sql: str) -> None:
    before = snapshot()
    params = [trail[0].seq] if "%s" in sql else []
    assert "append-only" in refused(raw(sql, params))
    assert_untouched(before)


def test_checkpoints_cannot_be_changed_or_removed(trail: list[AuditEvent]) -> None:
    checkpoint = Checkpoint.objects.get()
    signature = checkpoint.signature
    checkpoint.signature = "00" * 70
    assert "append-only" in refused(checkpoint.save)
    assert "append-only" in refused(lambda: Checkpoint.objects.update(head_hash="0" * 64))
    assert "append-only" in refused(lambda: Checkpoint.objects.all().delete())
    assert "append-only" in refused(raw("UPDATE audit_checkpoint SET seq = seq + 1"))
    assert "append-only" in refused(raw("DELETE FROM audit_checkpoint"))
    assert Checkpoint.objects.get().signature == signature


def test_truncate_is_refused_on_postgresql_and_does_not_exist_on_sqlite(trail: list[AuditEvent]) -> None:
    before = snapshot()
    if connection.vendor == "postgresql":
        assert "append-only" in refused(raw("TRUNCATE audit_auditevent CASCADE"))
        assert "append-only" in refused(raw("TRUNCATE audit_checkpoint"))
    else:
        # SQLite has no TRUNCATE: its spelling is an unqualified DELETE, refused like any other.
        assert "append-only" in refused(raw("DELETE FROM audit_auditevent"))
    assert_untouched(before)
    assert Checkpoint.objects.count() == 1


def test_the_chain_head_cannot_be_wound_back_or_removed(trail: list[AuditEvent]) -> None:
    head = ChainHead.objects.get(pk=1)
    assert "chain head" in refused(lambda: ChainHead.objects.filter(pk=1).update(seq=head.seq - 3))
    assert "chain head" in refused(lambda: ChainHead.objects.filter(pk=1).update(hash="0" * 64))
    assert "chain head" in refused(lambda: ChainHead.objects.filter(pk=1).update(seq=head.seq + 2))
    assert "chain head" in refused(lambda: ChainHead.objects.all().delete())
    assert "chain head" in refused(raw("DELETE FROM audit_chainhead"))
    assert ChainHead.objects.get(pk=1).seq == head.seq
    # The one change allowed is the next append.
    assert services.record("test.next").seq == head.seq + 1


def test_an_event_off_the_chain_head_is_refused(trail: list[AuditEvent]) -> None:
    head = ChainHead.objects.get(pk=1)
    last = AuditEvent.objects.get(seq=head.seq)
    fields = {
        "at": last.at,
        "actor": "system",
        "via": "system",
        "action": "test.forged",
        "details": {},
        "hash": "f" * 64,
    }
    # A gap in the numbers, a number already taken (the primary key refuses it too), a wrong link.
    assert "chain head" in refused(lambda: AuditEvent.objects.create(seq=head.seq + 2, prev_hash=head.hash, **fields))
    refused(lambda: AuditEvent.objects.create(seq=head.seq, prev_hash=last.prev_hash, **fields))
    assert "chain head" in refused(lambda: AuditEvent.objects.create(seq=head.seq + 1, prev_hash="0" * 64, **fields))
    assert not AuditEvent.objects.filter(action="test.forged").exists()
    assert services.verify_chain().ok


@pytest.mark.django_db(transaction=True)
def test_another_client_of_the_database_is_refused_too(kms: Any) -> None:
    """Not only the console: a database shell (sqlite3, psql) hits the same guards."""
    add_events(2)
    settings = connection.settings_dict
    if connection.vendor == "postgresql":
        import psycopg

        other = psycopg.connect(
            dbname=settings["NAME"], user=settings["USER"], host=settings["HOST"], port=settings["PORT"] or 5432
        )
        expected: type[Exception] = psycopg.Error
    else:
        import sqlite3

        # A plain sqlite3 connection (the sqlite3 shell, another program) has no
        # kms_audit_writable() function, so the guard fails closed ("no such function").
        other = sqlite3.connect(settings["NAME"], uri=True)
        expected = sqlite3.Error
    try:
        for sql in ("UPDATE audit_auditevent SET actor = 'x'", "DELETE FROM audit_auditevent"):
            with pytest.raises(expected, match=r"append-only|no such function: kms_audit_writable"):
                other.execute(sql)
            other.rollback()
    finally:
        other.close()
    assert services.verify_chain().ok
