"""One lock order for every writer: the audit chain head first, then the rows being changed.

`audit.services.record` locks the single chain-head row until its transaction commits. A
transaction that recorded an event and then locks a key row would deadlock (on PostgreSQL) with
one that locked that key row first and then records. So every row lock of the console's models
takes the chain head first (`TrailOrderedQuerySet.select_for_update`); writers then queue on the
head in one order and cannot form a cycle. Writes are serialised by it, which suits a key console's
write rate; reads, key use and HSM work (outside transactions) are not affected.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, models


def lock_trail() -> None:
    """Take the chain-head lock now (inside the caller's transaction); a no-op where there is no
    row locking (SQLite serialises writers itself)."""
    if not connection.features.has_select_for_update:
        return
    from .services import _lock_head

    _lock_head()


class TrailOrderedQuerySet(models.QuerySet):
    def select_for_update(self, *args: Any, **kwargs: Any) -> TrailOrderedQuerySet:
        lock_trail()
        return super().select_for_update(*args, **kwargs)


class TrailOrderedManager(models.Manager.from_queryset(TrailOrderedQuerySet)):  # type: ignore[misc]
    """The default manager of every model whose rows services lock."""
