"""Database-level protection of the audit tables, and the deliberate ways around it for tests.

PostgreSQL: row triggers refuse UPDATE and DELETE (see migration 0002). TRUNCATE is left to
privileges: production grants the application role INSERT and SELECT only on these tables.

SQLite: the triggers call kms_audit_writable(), a function this module registers on every
connection and which answers 0. A connection without it (the sqlite3 shell, another program) fails
the trigger with "no such function": the guard fails closed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from django.db import connection
from django.db.backends.signals import connection_created

_state = threading.local()


def _writable() -> int:
    return 1 if getattr(_state, "maintenance", False) else 0


def _on_connection_created(sender, connection, **kwargs) -> None:
    if connection.vendor == "sqlite":
        connection.connection.create_function("kms_audit_writable", 0, _writable, deterministic=False)


def install_sqlite_guard() -> None:
    connection_created.connect(_on_connection_created, dispatch_uid="audit-sqlite-guard")


@contextlib.contextmanager
def bypass_append_only() -> Iterator[None]:
    """Let UPDATE/DELETE through on this thread's connection. For tests (flush, tamper cases) only."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = replica")
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SET session_replication_role = DEFAULT")
    else:
        _state.maintenance = True
        try:
            yield
        finally:
            _state.maintenance = False
