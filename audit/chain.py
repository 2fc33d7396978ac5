"""The hash chain: how an event is hashed, and how the whole trail is verified."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from kms_console.lib.canonical import canonical_json, isoformat

from .models import GENESIS_HASH


def event_payload(
    *,
    seq: int,
    at: Any,
    actor: str,
    actor_id: int | None,
    via: str,
    source: str,
    action: str,
    target_type: str,
    target_id: str,
    details: dict,
) -> dict[str, Any]:
    return {
        "seq": seq,
        "at": isoformat(at),
        "actor": actor,
        "actor_id": actor_id,
        "via": via,
        "source": source,
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "details": details,
    }


def chain_hash(prev_hash: str, payload: dict[str, Any]) -> str:
    return hashlib.sha256(f"{prev_hash}\n{canonical_json(payload)}".encode()).hexdigest()


def payload_of(event: Any) -> dict[str, Any]:
    return event_payload(
        seq=event.seq,
        at=event.at,
        actor=event.actor,
        actor_id=event.actor_id,
        via=event.via,
        source=event.source,
        action=event.action,
        target_type=event.target_type,
        target_id=event.target_id,
        details=event.details,
    )


def checkpoint_message(seq: int, head_hash: str, signed_at: Any) -> bytes:
    """The bytes the HSM signs for a checkpoint."""
    return canonical_json(
        {"kind": "kms-audit-checkpoint", "seq": seq, "head": head_hash, "at": isoformat(signed_at)}
    ).encode()


@dataclass
class VerifyResult:
    ok: bool = True
    checked: int = 0
    head: str = GENESIS_HASH
    head_seq: int = 0
    first_bad_seq: int | None = None
    reason: str = ""
    checkpoints_checked: int = 0
    last_checkpoint_seq: int | None = None
    last_checkpoint_at: Any = None
    problems: list[str] = field(default_factory=list)

    def fail(self, seq: int, reason: str) -> None:
        if self.ok or (self.first_bad_seq is not None and seq < self.first_bad_seq):
            self.first_bad_seq = seq
            self.reason = reason
        self.ok = False
        self.problems.append(f"#{seq}: {reason}")

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": self.ok,
            "checked": self.checked,
            "head": self.head,
            "head_seq": self.head_seq,
            "checkpoints_checked": self.checkpoints_checked,
            "last_checkpoint_seq": self.last_checkpoint_seq,
            "last_checkpoint_at": isoformat(self.last_checkpoint_at) if self.last_checkpoint_at else None,
        }
        if not self.ok:
            body["first_bad_seq"] = self.first_bad_seq
            body["reason"] = self.reason
        return body


def verify_events(events: Any, checkpoints: list[Any], verify_signature: Any) -> VerifyResult:
    """Walk the events in order and check the chain, then every checkpoint against it.

    1. Sequence numbers must run 1, 2, 3… without a gap (a gap is a deleted event).
    2. Each event's prev_hash must be the previous event's hash, and its hash must recompute
       (an edited, inserted or reordered event breaks one of these at its own number).
    3. Each checkpoint's signature must verify with the trusted public key, and the event at its
       sequence number must carry the hash it signed; a checkpoint beyond the last event means the
       tail was cut.
    `verify_signature(message: bytes, signature_hex: str, key_id: str) -> bool`.
    """
    result = VerifyResult()
    expected_seq = 1
    prev_hash = GENESIS_HASH
    hashes_at: dict[int, str] = {}
    wanted = {cp.seq for cp in checkpoints}
    for event in events:
        if event.seq != expected_seq:
            result.fail(expected_seq, f"event #{expected_seq} is missing (next stored is #{event.seq})")
            return _finish(result, checkpoints, hashes_at, verify_signature)
        if event.prev_hash != prev_hash:
            result.fail(event.seq, "the link to the previous event is broken (event inserted, removed or reordered)")
            return _finish(result, checkpoints, hashes_at, verify_signature)
        recomputed = chain_hash(prev_hash, payload_of(event))
        if recomputed != event.hash:
            result.fail(event.seq, "the event's content does not match its hash (edited)")
            return _finish(result, checkpoints, hashes_at, verify_signature)
        if event.seq in wanted:
            hashes_at[event.seq] = event.hash
        prev_hash = event.hash
        result.checked += 1
        result.head = event.hash
        result.head_seq = event.seq
        expected_seq += 1
    return _finish(result, checkpoints, hashes_at, verify_signature)


def _finish(
    result: VerifyResult, checkpoints: list[Any], hashes_at: dict[int, str], verify_signature: Any
) -> VerifyResult:
    for cp in checkpoints:
        message = checkpoint_message(cp.seq, cp.head_hash, cp.signed_at)
        if not verify_signature(message, cp.signature, cp.key_id):
            result.fail(cp.seq, f"the checkpoint at #{cp.seq} has a signature that does not verify (forged)")
            continue
        result.checkpoints_checked += 1
        result.last_checkpoint_seq = cp.seq
        result.last_checkpoint_at = cp.signed_at
        if not result.ok and result.first_bad_seq is not None and cp.seq >= result.first_bad_seq:
            continue  # the chain is already broken before this point
        if cp.seq > result.head_seq:
            result.fail(
                result.head_seq + 1, f"events after #{result.head_seq} were removed (a checkpoint covers #{cp.seq})"
            )
        elif hashes_at.get(cp.seq) != cp.head_hash:
            result.fail(cp.seq, f"event #{cp.seq} differs from what the checkpoint signed (chain rewritten)")
    return result
