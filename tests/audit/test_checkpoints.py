"""Issue 5, item 4: the HSM signs the chain head (beat task, on demand), and only an audit key counts."""

from __future__ import annotations

import secrets
from io import StringIO
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.core.management import call_command
from django.core.management.base import CommandError

from audit import services, tasks
from audit.chain import CHECKPOINT_ACTION, checkpoint_message
from audit.models import AuditEvent, ChainHead, Checkpoint
from lifecycle.audit_signer import SIGNING_KEY_LABEL, HsmAuditSigner, find_signing_key_id
from lifecycle.hsm import HsmError, default_backend
from tests.api.conftest import assert_error
from tests.audit.helpers import add_events, change_details
from tests.conftest import api_client

pytestmark = pytest.mark.django_db


def test_a_checkpoint_signs_the_event_that_announces_it(kms: Any, clock: Any) -> None:
    add_events(3)
    checkpoint = services.sign_checkpoint()
    assert checkpoint is not None
    head = ChainHead.objects.get(pk=1)
    event = AuditEvent.objects.get(seq=checkpoint.seq)
    # The announcing event is the head the HSM signed.
    assert (event.action, event.target_id) == (CHECKPOINT_ACTION, str(checkpoint.seq))
    assert (checkpoint.seq, checkpoint.head_hash, checkpoint.signed_at) == (head.seq, head.hash, event.at)
    assert checkpoint.key_id == find_signing_key_id().hex()
    assert checkpoint.algorithm == "ECDSA-P256-SHA256"
    assert event.details == {
        "previous_checkpoint": None,
        "key_id": checkpoint.key_id,
        "algorithm": "ECDSA-P256-SHA256",
    }


def test_the_signature_verifies_with_the_public_key_alone(kms: Any) -> None:
    add_events(2)
    checkpoint = services.sign_checkpoint()
    pem = HsmAuditSigner().public_key_pem()
    public = serialization.load_pem_public_key(pem.encode())
    message = checkpoint_message(checkpoint.seq, checkpoint.head_hash, checkpoint.signed_at)
    public.verify(bytes.fromhex(checkpoint.signature), message, ec.ECDSA(hashes.SHA256()))  # raises if not


def test_signing_again_with_nothing_new_signs_nothing(kms: Any) -> None:
    add_events(2)
    first = services.sign_checkpoint()
    assert services.sign_checkpoint() is None
    assert Checkpoint.objects.count() == 1
    add_events(1)
    second = services.sign_checkpoint()
    assert second.seq == first.seq + 2  # the new event, then the announcement of the new checkpoint
    assert AuditEvent.objects.get(seq=second.seq).details["previous_checkpoint"] == first.seq


def test_the_beat_task_signs_once_and_is_idempotent(kms: Any) -> None:
    add_events(2)
    seq = tasks.sign_checkpoint.delay().get()  # eager in the tests: runs here and now
    assert seq == Checkpoint.objects.get().seq
    assert AuditEvent.objects.get(seq=seq).via == "beat"
    assert tasks.sign_checkpoint.delay().get() is None
    assert Checkpoint.objects.count() == 1


def test_kms_audit_checkpoint_signs_on_demand(kms: Any) -> None:
    add_events(1)
    out = StringIO()
    call_command("kms_audit", "checkpoint", stdout=out)
    checkpoint = Checkpoint.objects.get()
    assert out.getvalue().startswith(f"Signed checkpoint at #{checkpoint.seq} ")
    assert AuditEvent.objects.get(seq=checkpoint.seq).via == "cli"
    out = StringIO()
    call_command("kms_audit", "checkpoint", stdout=out)
    assert out.getvalue().strip() == "Nothing new since the last checkpoint."


def test_a_broken_chain_is_not_signed_and_the_refusal_is_recorded(kms: Any) -> None:
    events = add_events(3)
    services.sign_checkpoint()
    later = add_events(2)
    change_details(later[0].seq, {"n": "edited"})
    with pytest.raises(services.ChainBroken) as excinfo:
        services.sign_checkpoint()
    assert excinfo.value.details == {"first_bad_seq": later[0].seq}
    assert Checkpoint.objects.count() == 1
    refusal = AuditEvent.objects.order_by("-seq").first()
    assert refusal.action == "audit.checkpoint_refused"
    assert refusal.details["first_bad_seq"] == later[0].seq
    # The command reports it as an error too.
    with pytest.raises(CommandError, match=f"BROKEN at #{later[0].seq}"):
        call_command("kms_audit", "checkpoint", stdout=StringIO())
    assert events  # the first stretch stayed signed


def test_only_an_audit_signing_key_of_the_hsm_makes_a_valid_checkpoint(kms: Any) -> None:
    """A key on the same token that someone may sign with (a customer EC key) does not count."""
    backend = default_backend()
    other = secrets.token_bytes(16)
    backend.generate("EC-P256", other, usage="sign_verify", label="kms:customer:v1")
    message = b"any checkpoint message"
    signer = HsmAuditSigner()
    assert signer.verify(message, backend.sign(other, "EC-P256", message), other.hex()) is False
    assert signer.verify(message, signer.sign(message), signer.key_id) is True
    # Nor does a well-formed key id that names nothing, or one that is not hex.
    assert signer.verify(message, signer.sign(message), secrets.token_hex(16)) is False
    assert signer.verify(message, signer.sign(message), "not hex") is False
    assert backend.find_ids(label=SIGNING_KEY_LABEL, object_class="private_key") == [bytes.fromhex(signer.key_id)]


def test_a_software_key_cannot_sign_for_the_hsm(kms: Any) -> None:
    forger = ec.generate_private_key(ec.SECP256R1())
    message = b"a checkpoint message"
    signer = HsmAuditSigner()
    forged = forger.sign(message, ec.ECDSA(hashes.SHA256()))
    assert signer.verify(message, forged, signer.key_id) is False


def test_an_unreachable_hsm_is_reported_as_such_never_as_a_forged_checkpoint(
    kms: Any, erin: Any, settings: Any
) -> None:
    add_events(1)
    services.sign_checkpoint()
    client = api_client(erin, scopes=["read"])
    settings.KMS_HSM_TOKEN_LABEL = "no-such-token"  # the configured token is not there
    error = assert_error(client.get("/api/v1/audit/verify/"), 503, "unavailable")
    assert "audit signing key" in error["message"]
    with pytest.raises(CommandError, match="cannot be used now"):
        call_command("kms_audit", "verify", stdout=StringIO())
    with pytest.raises(CommandError, match="cannot be used now"):
        call_command("kms_audit", "checkpoint", stdout=StringIO())
    # To the lifecycle side (the compliance checks) it is an HSM error.
    with pytest.raises(HsmError):
        services.verify_chain()
    # Nothing was signed or recorded as broken meanwhile.
    assert Checkpoint.objects.count() == 1
    assert not AuditEvent.objects.filter(action="audit.checkpoint_refused").exists()
