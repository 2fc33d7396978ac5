"""A trail with two checkpoints, and the ways someone with write access to the database could tamper with it.

Layout (numbers relative to what the installation recorded before):
    a, a+1                 two events
    c1                     checkpoint 1 (its announcing event)
    c1+1 … c1+7            seven events
    c2                     checkpoint 2
    c2+1 … c2+3            three events (the head)
Each case changes the database around its guards and returns the sequence number that
verification must name as the first broken one.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from audit import services
from audit.chain import chain_hash, checkpoint_message, event_payload
from audit.models import AuditEvent, Checkpoint
from lifecycle.audit_signer import HsmAuditSigner
from lifecycle.hsm import default_backend
from tests.audit import helpers


@dataclass(frozen=True)
class Trail:
    first: int  # the first event of this trail
    c1: int
    c2: int
    head: int

    @property
    def middle(self) -> int:
        """An event between the two checkpoints."""
        return self.c1 + 3


def build_trail() -> Trail:
    first = helpers.add_events(2)[0].seq
    c1 = services.sign_checkpoint().seq
    helpers.add_events(7)
    c2 = services.sign_checkpoint().seq
    helpers.add_events(3)
    return Trail(first=first, c1=c1, c2=c2, head=helpers.head_seq())


# --- The cases ------------------------------------------------------------------------------------


def edit_details(t: Trail) -> int:
    helpers.change_details(t.middle, {"n": "something else"})
    return t.middle


def edit_actor(t: Trail) -> int:
    from audit.db import bypass_append_only

    with bypass_append_only():
        AuditEvent.objects.filter(seq=t.c2 + 1).update(actor="somebody-else")
    return t.c2 + 1


def delete_one(t: Trail) -> int:
    helpers.delete_events(seq_from=t.middle, seq_to=t.middle)
    return t.middle


def delete_and_close_the_gap(t: Trail) -> int:
    """Remove an event and renumber the later ones down, so the numbers run on."""
    from audit.db import bypass_append_only

    helpers.delete_events(seq_from=t.middle, seq_to=t.middle)
    with bypass_append_only():
        for seq in range(t.middle + 1, t.head + 1):
            AuditEvent.objects.filter(seq=seq).update(seq=seq - 1)
    helpers.set_head(t.head - 1, AuditEvent.objects.get(seq=t.head - 1).hash)
    return t.middle


def insert_well_formed(t: Trail) -> int:
    """Slip in an event whose hash is right and which links to its predecessor; renumber the rest up."""
    helpers.renumber_up_from(t.middle)
    before = AuditEvent.objects.get(seq=t.middle - 1)
    fields = {
        "seq": t.middle,
        "at": before.at,
        "actor": "alice",
        "actor_id": None,
        "via": "web",
        "source": "",
        "action": "key.created",
        "target_type": "key",
        "target_id": "forged",
        "details": {},
    }
    helpers.insert_raw(prev_hash=before.hash, hash=chain_hash(before.hash, event_payload(**fields)), **fields)
    return t.middle


def insert_naive(t: Trail) -> int:
    helpers.renumber_up_from(t.middle)
    before = AuditEvent.objects.get(seq=t.middle - 1)
    helpers.insert_raw(
        seq=t.middle, at=before.at, actor="x", via="web", action="x.y", details={}, prev_hash="1" * 64, hash="2" * 64
    )
    return t.middle


def swap_two(t: Trail) -> int:
    helpers.swap_contents(t.middle, t.middle + 1)
    return t.middle


def cut_tail_and_wind_back_the_head(t: Trail) -> int:
    """Remove everything from before the second checkpoint on, and make the head agree."""
    cut = t.c2 - 2
    helpers.delete_events(seq_from=cut)
    helpers.set_head(cut - 1, AuditEvent.objects.get(seq=cut - 1).hash)
    return cut


def cut_tail_after_the_last_checkpoint(t: Trail) -> int:
    helpers.delete_events(seq_from=t.c2 + 1)
    return t.c2 + 1


def flip_signature_bytes(t: Trail) -> int:
    checkpoint = Checkpoint.objects.get(seq=t.c2)
    signature = bytearray(bytes.fromhex(checkpoint.signature))
    signature[-1] ^= 0x01
    helpers.update_checkpoint(t.c2, signature=bytes(signature).hex())
    return t.c2


def _forge_checkpoint(seq: int, sign: Callable[[bytes], bytes], key_id: str) -> None:
    event = AuditEvent.objects.get(seq=seq)
    message = checkpoint_message(seq, event.hash, event.at)
    Checkpoint.objects.create(
        seq=seq, head_hash=event.hash, signed_at=event.at, key_id=key_id, signature=sign(message).hex()
    )


def forge_with_a_software_key(t: Trail) -> int:
    """A checkpoint over the true head, signed by a key the forger made, naming the real key id."""
    forger = ec.generate_private_key(ec.SECP256R1())
    _forge_checkpoint(t.head, lambda m: forger.sign(m, ec.ECDSA(hashes.SHA256())), HsmAuditSigner().key_id)
    return t.head


def forge_with_another_hsm_key(t: Trail) -> int:
    """Signed inside the HSM, but by a customer's EC key that an API client could use."""
    other = secrets.token_bytes(16)
    backend = default_backend()
    backend.generate("EC-P256", other, usage="sign_verify", label="kms:customer:v1")
    _forge_checkpoint(t.head, lambda m: backend.sign(other, "EC-P256", m), other.hex())
    return t.head


def rewrite_the_chain(t: Trail) -> int:
    """Edit an event and recompute every hash after it (and the head): only a checkpoint can tell."""
    helpers.change_details(t.middle, {"n": "rewritten"})
    helpers.rechain_from(t.middle)
    return t.c1 + 1  # everything after the last checkpoint that still matches is in doubt


def delete_a_checkpoint(t: Trail) -> int:
    helpers.delete_checkpoints(seq=t.c2)
    return t.c2


CASES: dict[str, Callable[[Trail], int]] = {
    "changed details": edit_details,
    "changed actor": edit_actor,
    "deleted event": delete_one,
    "deleted event, gap closed": delete_and_close_the_gap,
    "inserted event, well formed": insert_well_formed,
    "inserted event, naive": insert_naive,
    "two events swapped": swap_two,
    "tail cut after a checkpoint": cut_tail_and_wind_back_the_head,
    "tail cut after the last checkpoint": cut_tail_after_the_last_checkpoint,
    "checkpoint signature bytes flipped": flip_signature_bytes,
    "checkpoint signed with a software key": forge_with_a_software_key,
    "checkpoint signed with another HSM key": forge_with_another_hsm_key,
    "chain rewritten, hashes recomputed": rewrite_the_chain,
    "checkpoint deleted": delete_a_checkpoint,
}
