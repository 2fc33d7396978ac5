"""Helpers of the audit tests: build a trail, and tamper with it the way a database administrator could.

Tampering goes around the database guards on purpose (`audit.db.bypass_append_only`); everything
else goes through the services.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import connection

from audit import services
from audit.chain import chain_hash, payload_of
from audit.db import bypass_append_only
from audit.models import AuditEvent, ChainHead, Checkpoint


def add_events(count: int, action: str = "test.event") -> list[AuditEvent]:
    """`count` ordinary events, numbered in their details."""
    return [services.record(action, target_type="test", target_id=n, details={"n": n}) for n in range(count)]


def head_seq() -> int:
    return ChainHead.objects.get(pk=1).seq


def event(seq: int) -> AuditEvent:
    return AuditEvent.objects.get(seq=seq)


def set_head(seq: int, digest: str) -> None:
    with bypass_append_only():
        ChainHead.objects.filter(pk=1).update(seq=seq, hash=digest)


def rechain_from(seq: int) -> None:
    """Recompute prev_hash and hash of every event from `seq` on, and the head: a careful forger's work."""
    with bypass_append_only():
        previous = AuditEvent.objects.filter(seq__lt=seq).order_by("-seq").first()
        prev_hash = previous.hash if previous else "0" * 64
        last = None
        for row in AuditEvent.objects.filter(seq__gte=seq).order_by("seq"):
            digest = chain_hash(prev_hash, payload_of(row))
            AuditEvent.objects.filter(seq=row.seq).update(prev_hash=prev_hash, hash=digest)
            prev_hash, last = digest, row.seq
        if last is not None:
            ChainHead.objects.filter(pk=1).update(seq=last, hash=prev_hash)


def change_details(seq: int, details: dict[str, Any]) -> None:
    with bypass_append_only():
        AuditEvent.objects.filter(seq=seq).update(details=details)


def delete_events(*, seq_from: int, seq_to: int | None = None) -> None:
    with bypass_append_only():
        rows = AuditEvent.objects.filter(seq__gte=seq_from)
        if seq_to is not None:
            rows = rows.filter(seq__lte=seq_to)
        rows.delete()


def renumber_up_from(seq: int) -> None:
    """Move every event from `seq` on one number up (highest first, so the primary key never clashes),
    and the head with them, making room for an event at `seq`."""
    with bypass_append_only():
        for row_seq in AuditEvent.objects.filter(seq__gte=seq).order_by("-seq").values_list("seq", flat=True):
            AuditEvent.objects.filter(seq=row_seq).update(seq=row_seq + 1)
        head = ChainHead.objects.get(pk=1)
        ChainHead.objects.filter(pk=1).update(seq=head.seq + 1)


def insert_raw(**fields: Any) -> None:
    with bypass_append_only():
        AuditEvent.objects.create(**fields)


def swap_contents(a: int, b: int) -> None:
    """Exchange everything but the sequence numbers of two events (a reordering)."""
    names = ["at", "actor", "actor_id", "via", "source", "action", "target_type", "target_id", "details"]
    names += ["prev_hash", "hash"]
    first = AuditEvent.objects.values(*names).get(seq=a)
    second = AuditEvent.objects.values(*names).get(seq=b)
    with bypass_append_only():
        AuditEvent.objects.filter(seq=a).update(**second)
        AuditEvent.objects.filter(seq=b).update(**first)


def delete_checkpoints(**filters: Any) -> None:
    with bypass_append_only():
        Checkpoint.objects.filter(**filters).delete()


def update_checkpoint(seq: int, **fields: Any) -> None:
    with bypass_append_only():
        Checkpoint.objects.filter(seq=seq).update(**fields)


def all_rows_text() -> str:
    """Every stored field of every event and checkpoint as JSON (what a secret scan reads)."""
    events = list(AuditEvent.objects.order_by("seq").values())
    checkpoints = list(Checkpoint.objects.order_by("seq").values())
    return json.dumps({"events": events, "checkpoints": checkpoints}, default=str, ensure_ascii=False)


def vendor() -> str:
    return connection.vendor
