#!/usr/bin/env python3
"""Check an audit trail export of the KMS console offline, with nothing but the signing public key.

    python tools/verify_audit_export.py EXPORT.jsonl --public-key audit-signing.pem

Needs Python 3.11+ and the `cryptography` package; not Django, not the database, not the HSM. Get
the public key once, through a channel you trust, with `manage.py kms_audit export --public-key-only`
(the export's header carries a copy, but a copy inside the file you are checking proves nothing).

What it checks, in this order:
1. Every event: sequence numbers run on without a gap, each event links to the one before it
   (prev_hash), and its hash recomputes: SHA-256 over the previous hash, a newline and the
   canonical JSON (sorted keys, no spaces, UTF-8) of the event without prev_hash and hash.
2. Every checkpoint: its ECDSA P-256 / SHA-256 signature over the canonical JSON
   {"at", "head", "kind": "kms-audit-checkpoint", "seq"} verifies with YOUR public key, and the
   event at its sequence number carries the hash it signed. A checkpoint beyond the last event
   means events were cut off; a mismatch means the chain was rewritten after the previous
   checkpoint that still matches. Every checkpoint the events announce must be in the file, and
   the last event must be covered by one (an export ends at a checkpoint it signed).
3. The file is complete: it ends with the end line, its counts match, and the events reach the
   chain head the header names.
Output: one line. Exit 0 "OK: …"; exit 1 "BROKEN at #N: …" (N is the first sequence number that
cannot be trusted); exit 2 when the file or key cannot be read as an export or a P-256 public key.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

FORMAT = "kms-audit-export"
VERSIONS = {1}
GENESIS_HASH = "0" * 64
CHECKPOINT_ACTION = "audit.checkpoint_signed"
EVENT_FIELDS = ("seq", "at", "actor", "actor_id", "via", "source", "action", "target_type", "target_id", "details")
CHECKPOINT_FIELDS = ("seq", "head_hash", "signed_at", "key_id", "signature")


class InvalidExport(Exception):
    """The file is not a readable export (exit 2), as opposed to an export whose chain is broken."""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, event: dict[str, Any]) -> str:
    payload = {name: event[name] for name in EVENT_FIELDS}
    return hashlib.sha256(f"{prev_hash}\n{canonical_json(payload)}".encode()).hexdigest()


def checkpoint_message(checkpoint: dict[str, Any]) -> bytes:
    return canonical_json(
        {
            "kind": "kms-audit-checkpoint",
            "seq": checkpoint["seq"],
            "head": checkpoint["head_hash"],
            "at": checkpoint["signed_at"],
        }
    ).encode()


@dataclass
class Report:
    ok: bool = True
    first_bad_seq: int | None = None
    reason: str = ""
    checked: int = 0
    first_seq: int = 1
    head_seq: int = 0
    head: str = GENESIS_HASH
    checkpoints_checked: int = 0
    last_checkpoint_seq: int | None = None
    notes: list[str] = field(default_factory=list)

    def fail(self, seq: int, reason: str) -> None:
        if self.ok or (self.first_bad_seq is not None and seq < self.first_bad_seq):
            self.first_bad_seq = seq
            self.reason = reason
        self.ok = False

    def line(self) -> str:
        if not self.ok:
            return f"BROKEN at #{self.first_bad_seq}: {self.reason} ({self.checked} events verified before it)."
        span = f"#{self.first_seq} to #{self.head_seq}" if self.checked else "none"
        signed = (
            f"last signed checkpoint at #{self.last_checkpoint_seq}"
            if self.last_checkpoint_seq
            else "no signed checkpoint"
        )
        notes = "".join(f" Note: {note}" for note in self.notes)
        return (
            f"OK: {self.checked} events verified ({span}), head {self.head[:16]}, "
            f"{self.checkpoints_checked} checkpoint(s) verified, {signed}.{notes}"
        )


# --- Reading ----------------------------------------------------------------------------------------


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidExport(f"cannot read a PEM public key from {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InvalidExport(f"{path} is not an EC P-256 public key")
    return key


def _require(obj: dict[str, Any], names: tuple[str, ...], what: str, number: int) -> None:
    missing = [name for name in names if name not in obj]
    if missing:
        raise InvalidExport(f"line {number}: the {what} lacks {', '.join(missing)}")


def read_export(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(header, events, checkpoints, end line) as the file holds them, in file order."""
    header: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    events: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise InvalidExport(f"cannot open {path}: {exc.strerror}") from None
    with handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                raise InvalidExport(f"line {number} is not JSON") from None
            if not isinstance(obj, dict):
                raise InvalidExport(f"line {number} is not a JSON object")
            kind = obj.get("type")
            if end is not None:
                raise InvalidExport(f"line {number} comes after the end line")
            if number == 1:
                if kind != "header" or obj.get("format") != FORMAT:
                    raise InvalidExport("the first line is not the header of a KMS audit export")
                if obj.get("version") not in VERSIONS:
                    raise InvalidExport(f"export format version {obj.get('version')!r} is not one this tool reads")
                header = obj
            elif kind == "event":
                _require(obj, (*EVENT_FIELDS, "prev_hash", "hash"), "event", number)
                events.append(obj)
            elif kind == "checkpoint":
                _require(obj, CHECKPOINT_FIELDS, "checkpoint", number)
                checkpoints.append(obj)
            elif kind == "end":
                end = obj
            else:
                raise InvalidExport(f"line {number} has an unknown type {kind!r}")
    if header is None:
        raise InvalidExport("the file is empty")
    if end is None:
        raise InvalidExport("the file is incomplete: it has no end line (cut short?)")
    if end.get("events") != len(events) or end.get("checkpoints") != len(checkpoints):
        raise InvalidExport("the end line's counts do not match the lines in the file (lines added or removed)")
    return header, events, checkpoints, end


# --- Checking ---------------------------------------------------------------------------------------


def _valid_signature(public_key: ec.EllipticCurvePublicKey, checkpoint: dict[str, Any]) -> bool:
    try:
        signature = bytes.fromhex(str(checkpoint["signature"]))
        public_key.verify(signature, checkpoint_message(checkpoint), ec.ECDSA(hashes.SHA256()))
    except (ValueError, InvalidSignature, TypeError):
        return False
    return True


def _well_formed_time(value: Any) -> bool:
    try:
        dt.datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True


def verify(
    header: dict[str, Any],
    events: list[dict[str, Any]],
    checkpoints: list[dict[str, Any]],
    public_key: ec.EllipticCurvePublicKey,
) -> Report:
    """The rules of the module docstring; the same ones the console applies (audit.chain)."""
    report = Report()
    since = int(header.get("since") or 1)
    through = int(header.get("through") or 0)
    report.first_seq = since
    expected = since
    prev_hash = events[0]["prev_hash"] if events and since > 1 else GENESIS_HASH
    before_prev: str | None = None
    hashes_at: dict[int, str] = {since - 1: prev_hash} if since > 1 else {}
    signed_at_events: list[int] = []
    report.head_seq, report.head = since - 1, prev_hash
    for event in events:
        seq = event["seq"]
        if seq != expected:
            report.fail(expected, f"event #{expected} is missing (deleted; the next in the file is #{seq})")
            break
        if event["prev_hash"] != prev_hash:
            if before_prev is not None and event["prev_hash"] == before_prev:
                report.checked -= 1
                report.head_seq -= 1
                report.head = before_prev
                hashes_at.pop(seq - 1, None)
                if signed_at_events and signed_at_events[-1] == seq - 1:
                    signed_at_events.pop()
                report.fail(seq - 1, f"event #{seq - 1} was inserted (#{seq} links past it)")
            else:
                report.fail(
                    seq, "the link to the previous event is broken (an event was removed, reordered or inserted)"
                )
            break
        if not _well_formed_time(event["at"]) or chain_hash(prev_hash, event) != event["hash"]:
            report.fail(seq, "the event's content does not match its hash (edited)")
            break
        hashes_at[seq] = event["hash"]
        if event["action"] == CHECKPOINT_ACTION:
            signed_at_events.append(seq)
        before_prev, prev_hash = prev_hash, event["hash"]
        report.checked += 1
        report.head_seq, report.head = seq, event["hash"]
        expected += 1
    chain_intact = report.ok
    if chain_intact and report.head_seq < through:
        report.fail(report.head_seq + 1, f"events #{report.head_seq + 1} to #{through} are missing from the file")
    walked_to = report.head_seq
    last_matching = 0
    present: set[int] = set()
    for checkpoint in sorted(checkpoints, key=lambda c: c["seq"]):
        seq = checkpoint["seq"]
        if not _valid_signature(public_key, checkpoint):
            report.fail(seq, f"the checkpoint at #{seq} has a signature that does not verify (forged)")
            continue
        present.add(seq)
        report.checkpoints_checked += 1
        if seq < since - 1:
            last_matching = seq  # before the exported stretch: only its signature can be checked
            continue
        if seq > walked_to:
            if chain_intact:
                report.fail(walked_to + 1, f"events after #{walked_to} were removed (a checkpoint covers #{seq})")
            continue
        if hashes_at.get(seq) != checkpoint["head_hash"]:
            report.fail(
                last_matching + 1,
                f"events #{last_matching + 1} to #{seq} differ from what the checkpoint at #{seq} signed "
                "(chain rewritten)",
            )
            continue
        last_matching = seq
        report.last_checkpoint_seq = seq
    if chain_intact:
        for seq in signed_at_events:
            if seq not in present:
                report.fail(seq, f"the checkpoint signed at #{seq} is missing (deleted)")
                break
    covered_to = max(report.last_checkpoint_seq or 0, since - 1)
    if report.ok and report.head_seq > covered_to:
        # A good export ends at a checkpoint, so events beyond the last one were added to the file.
        if covered_to < since:
            reason = "no checkpoint signed with this key covers the events: nothing in the file is vouched for"
        else:
            reason = f"events #{covered_to + 1} to #{report.head_seq} are covered by no checkpoint (added?)"
        report.fail(covered_to + 1, reason)
    return report


def _same_key(header: dict[str, Any], public_key: ec.EllipticCurvePublicKey) -> bool:
    pem = (header.get("signing_key") or {}).get("public_key_pem", "")
    try:
        named = serialization.load_pem_public_key(str(pem).encode())
    except ValueError:
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return named.public_bytes(der, spki) == public_key.public_bytes(der, spki)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a KMS console audit export offline.")
    parser.add_argument("export", type=Path, help="the JSON Lines file from `manage.py kms_audit export`")
    parser.add_argument("--public-key", type=Path, required=True, help="the audit signing public key (PEM)")
    args = parser.parse_args(argv)
    try:
        public_key = load_public_key(args.public_key)
        header, events, checkpoints, _ = read_export(args.export)
        report = verify(header, events, checkpoints, public_key)
    except InvalidExport as exc:
        sys.stdout.write(f"INVALID: {exc}\n")
        return 2
    except (KeyError, TypeError, ValueError) as exc:
        sys.stdout.write(f"INVALID: a line does not have the shape of an export line ({exc!r})\n")
        return 2
    if not _same_key(header, public_key):
        report.notes.append("the header names another public key than yours; checkpoints were checked with yours")
    sys.stdout.write(report.line() + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
