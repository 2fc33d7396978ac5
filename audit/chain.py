"""The hash chain: how an event is hashed, what a checkpoint signs, and how the whole trail is verified.

This module is pure (no queries): `audit.services` feeds it rows from the database. The offline
verifier `tools/verify_audit_export.py` re-implements the same rules without Django, so that an
outside party can check an export with nothing but the signing public key; the tests hold both to
the same tamper cases.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kms_console.lib.canonical import canonical_json, isoformat

from .models import GENESIS_HASH

# The action of the event that every checkpoint covers (recorded, then signed, in one transaction).
CHECKPOINT_ACTION = "audit.checkpoint_signed"

# verify_signature(message, signature_hex, key_id) -> bool
SignatureCheck = Callable[[bytes, str, str], bool]


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
    """The fields of an event that its hash covers (everything but prev_hash and hash)."""
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
    """SHA-256 (hex) over the previous hash, a newline and the canonical JSON of the payload."""
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
    """The bytes the HSM signs for a checkpoint (ECDSA P-256 over SHA-256 of these bytes)."""
    return canonical_json(
        {"kind": "kms-audit-checkpoint", "seq": seq, "head": head_hash, "at": isoformat(signed_at)}
    ).encode()


@dataclass
class VerifyResult:
    """What a verification found. `first_bad_seq` is the lowest sequence number that cannot be trusted."""

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

    @property
    def unsigned_events(self) -> int:
        """Verified events after the last verified checkpoint: the chain vouches for them, no signature does yet."""
        return self.head_seq - (self.last_checkpoint_seq or 0) if self.head_seq else 0

    def summary(self) -> str:
        """One line for people (the CLI, the console)."""
        if not self.ok:
            return f"BROKEN at #{self.first_bad_seq}: {self.reason} ({self.checked} events verified before it)."
        if self.last_checkpoint_seq:
            signed = f"last signed checkpoint at #{self.last_checkpoint_seq}"
        else:
            signed = "no signed checkpoint yet"
        return (
            f"OK: {self.checked} events verified, head #{self.head_seq} {self.head[:16]}, "
            f"{self.checkpoints_checked} checkpoint(s) verified, {signed}."
        )

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": self.ok,
            "checked": self.checked,
            "head": self.head,
            "head_seq": self.head_seq,
            "checkpoints_checked": self.checkpoints_checked,
            "last_checkpoint_seq": self.last_checkpoint_seq,
            "last_checkpoint_at": isoformat(self.last_checkpoint_at) if self.last_checkpoint_at else None,
            "unsigned_events": self.unsigned_events,
            "summary": self.summary(),
        }
        if not self.ok:
            body["first_bad_seq"] = self.first_bad_seq
            body["reason"] = self.reason
        return body


def verify_events(
    events: Iterable[Any],
    checkpoints: list[Any],
    verify_signature: SignatureCheck,
    *,
    head: tuple[int, str] | None = None,
    checkpoint_exists: Callable[[int], bool] | None = None,
    start: tuple[int, str] = (1, GENESIS_HASH),
) -> VerifyResult:
    """Walk the events in sequence order, then hold every checkpoint against what was walked.

    1. Sequence numbers run 1, 2, 3… without a gap; a gap at N means event N was deleted.
    2. Each event links to the previous one (prev_hash) and its hash recomputes. A broken link at N
       means an event was removed, reordered or inserted there; when N links to N-2 instead, the
       event at N-1 is the one that was inserted. A hash that does not recompute means an edit.
       The walk stops at the first break: nothing after it can be trusted.
    3. `head` (seq, hash) is the chain head the database keeps; a trail that ends before it had its
       tail cut, and a head hash that differs from the event at that number means a rewrite.
    4. Every checkpoint's signature must verify with the trusted key. A checkpoint beyond the last
       event means the tail was cut; one whose hash differs from the event at its number means the
       chain was rewritten (hashes recomputed) somewhere after the previous checkpoint that still
       matches, which is where the result places the first bad number.
    5. Every checkpoint the trail says was signed must still exist (`checkpoint_exists` answers for
       checkpoints signed after the `checkpoints` list was read).
    `start` (first seq, the hash it must link to) checks a stretch of the trail rather than all of
    it: the events from a checkpoint on, or an export made with --since.
    """
    result = VerifyResult()
    expected_seq, prev_hash = start
    result.head_seq, result.head = expected_seq - 1, prev_hash
    before_prev_hash: str | None = None
    wanted = {cp.seq for cp in checkpoints}
    # The hash the stretch starts from stands for the event before it (a checkpoint may sign it).
    hashes_at: dict[int, str] = {expected_seq - 1: prev_hash} if expected_seq > 1 else {}
    signed_at_events: list[int] = []
    for event in events:
        if event.seq != expected_seq:
            result.fail(expected_seq, f"event #{expected_seq} is missing (deleted; the next stored is #{event.seq})")
            break
        if event.prev_hash != prev_hash:
            if before_prev_hash is not None and event.prev_hash == before_prev_hash:
                # The event before this one was slipped in: undo counting it.
                result.checked -= 1
                result.head_seq -= 1
                result.head = before_prev_hash
                hashes_at.pop(event.seq - 1, None)
                if signed_at_events and signed_at_events[-1] == event.seq - 1:
                    signed_at_events.pop()
                result.fail(event.seq - 1, f"event #{event.seq - 1} was inserted (#{event.seq} links past it)")
            else:
                result.fail(
                    event.seq, "the link to the previous event is broken (an event was removed, reordered or inserted)"
                )
            break
        if chain_hash(prev_hash, payload_of(event)) != event.hash:
            result.fail(event.seq, "the event's content does not match its hash (edited)")
            break
        if event.seq in wanted:
            hashes_at[event.seq] = event.hash
        if event.action == CHECKPOINT_ACTION:
            signed_at_events.append(event.seq)
        before_prev_hash, prev_hash = prev_hash, event.hash
        result.checked += 1
        result.head = event.hash
        result.head_seq = event.seq
        expected_seq += 1
    chain_intact = result.ok
    if chain_intact and head is not None:
        head_seq, head_hash = head
        if result.head_seq < head_seq:
            result.fail(
                result.head_seq + 1,
                f"events #{result.head_seq + 1} to #{head_seq} were removed (the chain head records #{head_seq})",
            )
        elif result.head_seq == head_seq and head_seq and result.head != head_hash:
            result.fail(head_seq, f"event #{head_seq} differs from the chain head's hash (rewritten)")
    _check_checkpoints(result, checkpoints, hashes_at, verify_signature, chain_intact=chain_intact, first_seq=start[0])
    if chain_intact:
        present = {cp.seq for cp in checkpoints}
        for seq in signed_at_events:
            if seq not in present and not (checkpoint_exists and checkpoint_exists(seq)):
                result.fail(seq, f"the checkpoint signed at #{seq} is missing (deleted)")
                break
    return result


def _check_checkpoints(
    result: VerifyResult,
    checkpoints: list[Any],
    hashes_at: dict[int, str],
    verify_signature: SignatureCheck,
    *,
    chain_intact: bool,
    first_seq: int,
) -> None:
    walked_to = result.head_seq
    last_matching = 0  # the highest checkpoint whose signature and hash both hold
    for cp in sorted(checkpoints, key=lambda c: c.seq):
        message = checkpoint_message(cp.seq, cp.head_hash, cp.signed_at)
        if not verify_signature(message, cp.signature, cp.key_id):
            result.fail(cp.seq, f"the checkpoint at #{cp.seq} has a signature that does not verify (forged)")
            continue
        result.checkpoints_checked += 1
        if cp.seq < first_seq - 1:
            last_matching = cp.seq  # before the stretch checked: only its signature can be checked
            continue
        if cp.seq > walked_to:
            if chain_intact:
                result.fail(walked_to + 1, f"events after #{walked_to} were removed (a checkpoint covers #{cp.seq})")
            continue  # otherwise the chain broke before this checkpoint: already reported
        if hashes_at.get(cp.seq) != cp.head_hash:
            result.fail(
                last_matching + 1,
                f"events #{last_matching + 1} to #{cp.seq} differ from what the checkpoint at #{cp.seq} signed "
                "(chain rewritten)",
            )
            continue
        last_matching = cp.seq
        result.last_checkpoint_seq = cp.seq
        result.last_checkpoint_at = cp.signed_at
