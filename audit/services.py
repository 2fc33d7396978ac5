"""Writing to, checking and exporting the audit trail. Every service of the console records through `record`.

Contracts:
- `record()` appends one event in the caller's transaction. Appends serialise on the chain head
  row (SELECT … FOR UPDATE on PostgreSQL; SQLite has one writer at a time), so sequence numbers are
  contiguous and a rolled-back transaction takes its events with it.
- `sign_checkpoint()` records a `audit.checkpoint_signed` event and has the HSM sign the head it
  makes, in one transaction; it signs nothing when nothing happened since the last checkpoint, and
  refuses to sign a chain that does not verify since then.
- `verify_chain()` checks every event and checkpoint with the public key from the HSM (never one
  stored in the database).
- `export_trail()` writes JSON Lines that `tools/verify_audit_export.py` checks offline.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from kms_console.lib.canonical import canonical_json, isoformat
from kms_console.lib.errors import Conflict

from . import context
from .chain import (
    CHECKPOINT_ACTION,
    VerifyResult,
    chain_hash,
    checkpoint_message,
    event_payload,
    payload_of,
    verify_events,
)
from .models import GENESIS_HASH, AuditEvent, ChainHead, Checkpoint

logger = logging.getLogger(__name__)

# Detail keys that would carry a secret. A service that tries to record one has a bug: refuse loudly
# rather than write it into a table nobody can ever clean.
FORBIDDEN_DETAIL_KEYS = frozenset(
    {
        "pin",
        "so_pin",
        "user_pin",
        "password",
        "passwd",
        "secret",
        "otp",
        "otp_code",
        "totp",
        "token",
        "api_token",
        "plaintext",
        "key_material",
        "private_key",
        "share",
        "shares",
        "recovery_key",
        "session_key",
    }
)
FORBIDDEN_DETAIL_SUFFIXES = ("_pin", "_password", "_passwd", "_secret", "_otp", "_token", "_plaintext", "_private_key")
# "A small JSON object": anything bigger is a bug (a whole document or blob being logged).
MAX_DETAILS_BYTES = 32 * 1024

EXPORT_FORMAT = "kms-audit-export"
EXPORT_VERSION = 1
SIGNATURE_ALGORITHM = "ECDSA-P256-SHA256"


class AuditDetailError(ValueError):
    """A service tried to record something an audit event must never hold."""


class ChainBroken(Conflict):
    """The chain does not verify, so it is not signed (a checkpoint would vouch for tampered events)."""

    code = "audit_chain_broken"


def _check_details(value: Any, path: str = "details") -> None:
    if isinstance(value, bytes | bytearray | memoryview):
        raise AuditDetailError(f"{path} holds raw bytes; audit details never carry binary data")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditDetailError(f"{path} has a non-text key")
            lowered = key.lower()
            if lowered in FORBIDDEN_DETAIL_KEYS or lowered.endswith(FORBIDDEN_DETAIL_SUFFIXES):
                raise AuditDetailError(f"{path}.{key} looks like a secret and may not be recorded")
            _check_details(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_details(item, f"{path}[{index}]")


def _check_text(name: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise AuditDetailError(f"{name} is longer than {limit} characters")
    return value


def _lock_head() -> ChainHead:
    try:
        # Lock first: this row is what orders concurrent appends.
        return ChainHead.objects.select_for_update().get(pk=1)
    except ChainHead.DoesNotExist:
        # The first event ever: make the row (a concurrent first writer may win the race; fine).
        ChainHead.objects.bulk_create([ChainHead(pk=1, seq=0, hash=GENESIS_HASH)], ignore_conflicts=True)
        return ChainHead.objects.select_for_update().get(pk=1)


def _actor_fields(actor: Any) -> tuple[str, int | None]:
    if actor is None or not getattr(actor, "is_authenticated", False):
        return "system", None
    return actor.get_username(), actor.pk


def record(
    action: str,
    *,
    actor: Any = None,
    target_type: str = "",
    target_id: Any = "",
    details: dict[str, Any] | None = None,
    via: str | None = None,
    source: str | None = None,
) -> AuditEvent:
    """Append one event in the caller's transaction (a new one if there is none).

    The actor defaults to the user of the current request, task or command (`audit.context`);
    pass `actor` when the acting user is known to the service. Raises AuditDetailError for details
    that look like secrets, hold bytes, or are not small.
    """
    _check_details(details or {})
    # Hash exactly what the database will give back: JSON types only, tuples as lists, and no
    # U+0000, which PostgreSQL cannot store in text or jsonb (a client may have sent one).
    text = canonical_json(details or {}).replace("\\u0000", "\\ufffd")
    if len(text.encode()) > MAX_DETAILS_BYTES:
        raise AuditDetailError(f"details of {action} are larger than {MAX_DETAILS_BYTES} bytes")
    details = json.loads(text)
    ctx = context.current()
    actor = actor if actor is not None else ctx.user
    actor_name, actor_id = _actor_fields(actor)
    fields = {
        "actor": actor_name,
        "actor_id": actor_id,
        "via": _check_text("via", via or ctx.via, 16),
        "source": (source if source is not None else ctx.source)[:64],
        "action": _check_text("action", action, 64),
        "target_type": _check_text("target_type", target_type, 32),
        "target_id": _check_text("target_id", str(target_id) if target_id else "", 64),
        "details": details,
    }
    with transaction.atomic():
        head = _lock_head()
        fields["seq"] = head.seq + 1
        fields["at"] = timezone.now()
        digest = chain_hash(head.hash, event_payload(**fields))
        event = AuditEvent.objects.create(prev_hash=head.hash, hash=digest, **fields)
        head.seq = event.seq
        head.hash = digest
        head.save(update_fields=["seq", "hash"])
    return event


# --- Reading ----------------------------------------------------------------------------------------


def events() -> Any:
    """All events, newest first (the order people read a trail in)."""
    return AuditEvent.objects.order_by("-seq")


def record_read(*, actor: Any, what: str, filters: dict[str, Any] | None = None, **details: Any) -> AuditEvent:
    """Reading the trail is itself an event (`audit.read`): who looked at what, with which filters."""
    return record(
        "audit.read", actor=actor, target_type="audit", details={"view": what, "filters": filters or {}, **details}
    )


def latest_checkpoint() -> Checkpoint | None:
    return Checkpoint.objects.order_by("-seq", "-id").first()


def chain_head() -> tuple[int, str]:
    """(sequence number, hash) of the last event; (0, genesis) before the first."""
    head = ChainHead.objects.filter(pk=1).first()
    return (head.seq, head.hash) if head else (0, GENESIS_HASH)


# --- Checkpoints ----------------------------------------------------------------------------------


def get_signer() -> Any:
    """The object that signs checkpoints with a key on the HSM (settings.KMS_AUDIT_SIGNER).

    It offers `key_id` (hex CKA_ID), `sign(message) -> DER bytes`, `verify(message, signature,
    key_id) -> bool` (False for a bad signature or a key that is not an audit signing key; it raises
    when the HSM cannot be asked) and `public_key_pem(key_id=None) -> str`.
    """
    return import_string(settings.KMS_AUDIT_SIGNER)()


def _signature_check(signer: Any) -> Any:
    def verify_signature(message: bytes, signature_hex: str, key_id: str) -> bool:
        try:
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            return False
        return bool(signer.verify(message, signature, key_id))

    return verify_signature


def _verify_since(last: Checkpoint | None, head: ChainHead, signer: Any) -> VerifyResult:
    """Check what a new checkpoint would vouch for: the last checkpoint, and every event after it."""
    start_seq, start_hash = (last.seq + 1, last.head_hash) if last is not None else (1, GENESIS_HASH)
    anchors = [last] if last is not None else []
    if last is not None and head.seq < last.seq:
        # The head went back behind a signed checkpoint: the tail was cut (and the head wound back).
        result = VerifyResult(head_seq=head.seq, head=head.hash)
        result.fail(head.seq + 1, f"events after #{head.seq} were removed (a checkpoint covers #{last.seq})")
        return result
    result = verify_events(
        AuditEvent.objects.filter(seq__gte=start_seq).order_by("seq").iterator(chunk_size=2000),
        anchors,
        _signature_check(signer),
        head=(head.seq, head.hash),
        start=(start_seq, start_hash),
    )
    return result


def sign_checkpoint(*, signer: Any = None) -> Checkpoint | None:
    """Sign the chain head now. Returns None when nothing happened since the last checkpoint.

    In one transaction holding the chain head lock:
    1. if the head is the last checkpoint's, there is nothing to sign;
    2. the chain since the last checkpoint must verify (else ChainBroken, and the refusal is recorded);
    3. record `audit.checkpoint_signed`, then sign the head that event made and store the
       checkpoint at its sequence number, so every checkpoint covers the event announcing it and
       running this twice in a row signs once.
    """
    signer = signer or get_signer()
    key_id = signer.key_id
    problem: VerifyResult | None = None
    with transaction.atomic():
        head = _lock_head()
        last = latest_checkpoint()
        if last is not None and last.seq == head.seq:
            return None
        check = _verify_since(last, head, signer)
        if not check.ok:
            problem = check
        else:
            event = record(
                CHECKPOINT_ACTION,
                target_type="audit",
                target_id=head.seq + 1,
                details={
                    "previous_checkpoint": last.seq if last is not None else None,
                    "key_id": key_id,
                    "algorithm": SIGNATURE_ALGORITHM,
                },
            )
            signature = signer.sign(checkpoint_message(event.seq, event.hash, event.at))
            checkpoint = Checkpoint.objects.create(
                seq=event.seq,
                head_hash=event.hash,
                signed_at=event.at,
                algorithm=SIGNATURE_ALGORITHM,
                key_id=key_id,
                signature=signature.hex(),
            )
    if problem is not None:
        record(
            "audit.checkpoint_refused",
            target_type="audit",
            details={"first_bad_seq": problem.first_bad_seq, "reason": problem.reason},
        )
        logger.error("audit checkpoint refused: %s", problem.summary())
        raise ChainBroken(
            f"The audit trail does not verify since the last checkpoint; not signing it. {problem.summary()}",
            details={"first_bad_seq": problem.first_bad_seq},
        )
    return checkpoint


def verify_chain(*, signer: Any = None) -> VerifyResult:
    """Check the whole trail and every checkpoint (with the public key from the HSM, not the database).

    Read order matters while others append: checkpoints first, then the head, then the events, so
    every checkpoint read lies at or before the head read, and every event up to the head is
    committed (an event and the head move in one transaction).
    """
    signer = signer or get_signer()
    checkpoints = list(Checkpoint.objects.order_by("seq", "id"))
    head = chain_head()
    return verify_events(
        AuditEvent.objects.order_by("seq").iterator(chunk_size=2000),
        checkpoints,
        _signature_check(signer),
        head=head,
        checkpoint_exists=lambda seq: Checkpoint.objects.filter(seq=seq).exists(),
    )


def record_verification(result: VerifyResult, *, actor: Any = None) -> AuditEvent:
    return record(
        "audit.verified",
        actor=actor,
        target_type="audit",
        details={
            "ok": result.ok,
            "checked": result.checked,
            "head_seq": result.head_seq,
            "first_bad_seq": result.first_bad_seq,
            "last_checkpoint_seq": result.last_checkpoint_seq,
        },
    )


# --- Export ---------------------------------------------------------------------------------------


class Writer(Protocol):
    def write(self, text: str, /) -> Any: ...


@dataclass(frozen=True)
class ExportSummary:
    since: int
    through: int
    events: int
    checkpoints: int
    sha256: str
    checkpoint_signed: bool


def event_line(event: AuditEvent) -> dict[str, Any]:
    return {"type": "event", **payload_of(event), "prev_hash": event.prev_hash, "hash": event.hash}


def checkpoint_line(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "type": "checkpoint",
        "seq": checkpoint.seq,
        "head_hash": checkpoint.head_hash,
        "signed_at": isoformat(checkpoint.signed_at),
        "algorithm": checkpoint.algorithm,
        "key_id": checkpoint.key_id,
        "signature": checkpoint.signature,
    }


def signing_key_info(signer: Any = None) -> dict[str, str]:
    signer = signer or get_signer()
    key_id = signer.key_id
    return {"key_id": key_id, "algorithm": SIGNATURE_ALGORITHM, "public_key_pem": signer.public_key_pem(key_id)}


def export_trail(out: Writer, *, since: int = 1, signer: Any = None, actor: Any = None) -> ExportSummary:
    """Write the trail as JSON Lines to `out`, then record the export (`audit.exported`).

    Lines, each canonical JSON: a header (format, version, exported_at, range, chain head, signing
    key id and public key PEM), every event from `since` on, every checkpoint, and an end line
    with the counts (a file cut short has none).
    1. The head is signed first (when it is not yet), and the export runs through that checkpoint:
       every event of a good export is covered by a signature, so the offline verifier can refuse
       events that no checkpoint covers (ones appended to the file later). Events recorded while
       the export runs wait for the next one.
    2. A chain that does not verify is not signed; it is exported all the same, through the head
       and with every checkpoint (also any beyond the last event: that is how a cut tail shows
       offline), so the verifier can show where it breaks. The refusal to sign is on record.
    """
    signer = signer or get_signer()
    since = max(1, int(since))
    try:
        signed = sign_checkpoint(signer=signer) is not None
        intact = True
    except ChainBroken:
        signed = intact = False
    # Checkpoints before the head (see verify_chain): each one read lies at or before the head read.
    checkpoints = list(Checkpoint.objects.order_by("seq", "id"))
    head_seq, head_hash = chain_head()
    if intact and checkpoints:
        last = max(checkpoints, key=lambda cp: cp.seq)
        head_seq, head_hash = last.seq, last.head_hash
    digest = hashlib.sha256()

    def write(obj: dict[str, Any]) -> None:
        line = canonical_json(obj) + "\n"
        digest.update(line.encode())
        out.write(line)

    write(
        {
            "type": "header",
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "exported_at": isoformat(timezone.now()),
            "since": since,
            "through": head_seq,
            "chain_head": {"seq": head_seq, "hash": head_hash},
            "genesis_hash": GENESIS_HASH,
            "hashing": "hash = sha256(prev_hash + '\\n' + canonical_json(event without prev_hash and hash))",
            "signing_key": signing_key_info(signer),
        }
    )
    event_count = 0
    for event in _events_between(since, head_seq):
        write(event_line(event))
        event_count += 1
    checkpoint_count = 0
    for checkpoint in checkpoints:
        write(checkpoint_line(checkpoint))
        checkpoint_count += 1
    write({"type": "end", "events": event_count, "checkpoints": checkpoint_count})
    summary = ExportSummary(
        since=since,
        through=head_seq,
        events=event_count,
        checkpoints=checkpoint_count,
        sha256=digest.hexdigest(),
        checkpoint_signed=signed,
    )
    record(
        "audit.exported",
        actor=actor,
        target_type="audit",
        details={
            "since": since,
            "through": head_seq,
            "events": event_count,
            "checkpoints": checkpoint_count,
            "sha256": summary.sha256,
        },
    )
    return summary


def _events_between(since: int, through: int) -> Iterable[AuditEvent]:
    return AuditEvent.objects.filter(seq__gte=since, seq__lte=through).order_by("seq").iterator(chunk_size=2000)
