"""Writing to and checking the audit trail. Every service of the console records through `record`."""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from kms_console.lib.canonical import canonical_json

from . import context
from .chain import VerifyResult, chain_hash, checkpoint_message, event_payload, verify_events
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


class AuditDetailError(ValueError):
    pass


def _check_details(value: Any, path: str = "details") -> None:
    if isinstance(value, bytes | bytearray | memoryview):
        raise AuditDetailError(f"{path} holds raw bytes; audit details never carry binary data")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditDetailError(f"{path} has a non-text key")
            if key.lower() in FORBIDDEN_DETAIL_KEYS:
                raise AuditDetailError(f"{path}.{key} looks like a secret and may not be recorded")
            _check_details(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_details(item, f"{path}[{index}]")


def _lock_head() -> ChainHead:
    try:
        # Lock first: this row is what orders concurrent appends.
        return ChainHead.objects.select_for_update().get(pk=1)
    except ChainHead.DoesNotExist:
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
    pass `actor` when the acting user is known to the service.
    """
    _check_details(details or {})
    # Hash exactly what the database will give back: JSON types only, tuples as lists.
    details = json.loads(canonical_json(details or {}))
    ctx = context.current()
    actor = actor if actor is not None else ctx.user
    actor_name, actor_id = _actor_fields(actor)
    with transaction.atomic():
        head = _lock_head()
        seq = head.seq + 1
        at = timezone.now()
        fields = {
            "seq": seq,
            "at": at,
            "actor": actor_name,
            "actor_id": actor_id,
            "via": via or ctx.via,
            "source": (source if source is not None else ctx.source)[:64],
            "action": action,
            "target_type": target_type,
            "target_id": str(target_id) if target_id else "",
            "details": details,
        }
        # Hash what the database will give back: round-trip details through JSON once.
        payload = event_payload(**fields)
        digest = chain_hash(head.hash, payload)
        event = AuditEvent.objects.create(prev_hash=head.hash, hash=digest, **fields)
        head.seq = seq
        head.hash = digest
        head.save(update_fields=["seq", "hash"])
    return event


# --- Checkpoints ----------------------------------------------------------------------------------


def get_signer() -> Any:
    """The object that signs checkpoints with a key on the HSM (settings.KMS_AUDIT_SIGNER)."""
    return import_string(settings.KMS_AUDIT_SIGNER)()


def sign_checkpoint(*, signer: Any = None) -> Checkpoint | None:
    """Sign the current chain head. Returns None when nothing happened since the last checkpoint."""
    signer = signer or get_signer()
    with transaction.atomic():
        head = _lock_head()
        if head.seq == 0:
            return None
        last = Checkpoint.objects.order_by("-seq", "-id").first()
        if last is not None and last.seq == head.seq:
            return None
        signed_at = timezone.now()
        signature = signer.sign(checkpoint_message(head.seq, head.hash, signed_at))
        checkpoint = Checkpoint.objects.create(
            seq=head.seq,
            head_hash=head.hash,
            signed_at=signed_at,
            key_id=signer.key_id,
            signature=signature.hex(),
        )
    record("audit.checkpoint_signed", target_type="audit", target_id=checkpoint.seq, details={"seq": checkpoint.seq})
    return checkpoint


def verify_chain(*, signer: Any = None) -> VerifyResult:
    """Check the whole trail and every checkpoint (with the public key from the HSM, not the database)."""
    signer = signer or get_signer()
    checkpoints = list(Checkpoint.objects.order_by("seq", "id"))
    events = AuditEvent.objects.order_by("seq").iterator(chunk_size=2000)

    def verify_signature(message: bytes, signature_hex: str, key_id: str) -> bool:
        try:
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            return False
        return signer.verify(message, signature, key_id)

    return verify_events(events, checkpoints, verify_signature)


def latest_checkpoint() -> Checkpoint | None:
    return Checkpoint.objects.order_by("-seq", "-id").first()


def chain_head() -> tuple[int, str]:
    head = ChainHead.objects.filter(pk=1).first()
    return (head.seq, head.hash) if head else (0, GENESIS_HASH)
