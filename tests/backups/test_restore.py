"""Restore from a backup under split knowledge: dual control plus M custodians entering their shares."""

from __future__ import annotations

import secrets
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from pkcs11 import Attribute, ObjectClass

from approvals.models import RequestState
from audit.models import AuditEvent
from kms_console.lib.errors import ApplicationError
from lifecycle.backups.restore import enter_share, expire_restores
from lifecycle.hsm import default_backend
from lifecycle.models import Hsm, Job, JobStatus, KeyVersion, Restore, RestoreShare, RestoreState
from lifecycle.services.jobs import run_job
from tests.backups.conftest import back_up, enter, hold_escrow, open_restore
from tests.lifecycle.helpers import generate_key, make_policy

pytestmark = pytest.mark.django_db


@pytest.fixture
def data_key(cast: SimpleNamespace, clock: Any, escrow: Any) -> Any:
    return generate_key(cast.alice, cast.approvers, clock, name="payments")


def objects_under(backend: Any, cka_id: str) -> int:
    return sum(1 for row in backend.inventory() if row.cka_id == cka_id)


def test_it_restores_a_destroyed_object_from_shares_and_decrypts_old_ciphertext(
    cast: SimpleNamespace, clock: Any, data_key: Any, shares: dict[str, str]
) -> None:
    version = data_key.primary_version
    backend = default_backend()
    ciphertext = backend.encrypt(version.cka_id_bytes, b"card data", b"ctx")
    backup = back_up(data_key, cast, clock)
    assert backup.kcv == version.kcv and backup.verified_at is not None

    # Disaster: the object is destroyed on the token behind the console's back.
    backend.destroy(version.cka_id_bytes)
    assert not backend.exists(version.cka_id_bytes)

    req = open_restore(data_key, backup, cast, clock)
    assert req.state == RequestState.EXECUTING  # approved; waiting for the shares
    restore = Restore.objects.get(request=req)
    assert restore.state == RestoreState.COLLECTING

    enter(restore.pk, cast.bob, shares["bob"], clock)
    restore.refresh_from_db()
    assert restore.state == RestoreState.COLLECTING  # one of two
    enter(restore.pk, cast.dave, shares["dave"], clock)

    restore.refresh_from_db()
    req.refresh_from_db()
    assert restore.state == RestoreState.RESTORED
    assert restore.restored_kcv == version.kcv
    assert req.state == RequestState.EXECUTED
    assert backend.decrypt(version.cka_id_bytes, ciphertext, b"ctx") == b"card data"
    assert backend.key_check_value(version.cka_id_bytes, "AES-256") == version.kcv
    # The entered shares are gone from the database; the hand-off and the restore are audited.
    assert set(RestoreShare.objects.filter(restore=restore).values_list("sealed", flat=True)) == {""}
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"restore.collecting", "restore.share_entered", "backup.restored"} <= actions


def test_it_restores_into_another_registered_hsm(
    cast: SimpleNamespace, clock: Any, data_key: Any, shares: dict[str, str], other_hsm: Hsm
) -> None:
    version = data_key.primary_version
    ciphertext = default_backend().encrypt(version.cka_id_bytes, b"moved")
    backup = back_up(data_key, cast, clock)
    default_backend().destroy(version.cka_id_bytes)

    req = open_restore(data_key, backup, cast, clock, hsm="other")
    restore = Restore.objects.get(request=req)
    enter(restore.pk, cast.carol, shares["carol"], clock)
    enter(restore.pk, cast.bob, shares["bob"], clock)

    version.refresh_from_db()
    data_key.refresh_from_db()
    assert version.hsm == other_hsm
    assert data_key.hsm == other_hsm  # new versions are made where the primary lives now
    other = other_hsm.backend()
    assert other.decrypt(version.cka_id_bytes, ciphertext) == b"moved"
    assert not default_backend().exists(version.cka_id_bytes)


def test_a_redelivered_restore_job_makes_one_object(
    cast: SimpleNamespace, clock: Any, data_key: Any, shares: dict[str, str]
) -> None:
    version = data_key.primary_version
    backup = back_up(data_key, cast, clock)
    default_backend().destroy(version.cka_id_bytes)
    req = open_restore(data_key, backup, cast, clock)
    restore = Restore.objects.get(request=req)
    enter(restore.pk, cast.bob, shares["bob"], clock)
    enter(restore.pk, cast.carol, shares["carol"], clock)
    job = Job.objects.get(kind="restore", request=req)
    assert job.status == JobStatus.SUCCEEDED

    # The broker delivers the task again: nothing runs twice.
    run_job(job.pk)
    # And a worker that died after the HSM step (job back to running, lease over) re-runs it:
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, started_at=clock.now().replace(year=2020))
    Restore.objects.filter(pk=restore.pk).update(state=RestoreState.RESTORING)
    run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.result["created"] is False  # it found the object it had made
    assert objects_under(default_backend(), version.cka_id) == 1


# --- Refusals: nothing changes, everything is audited ---------------------------------------------


@pytest.fixture
def waiting_restore(cast: SimpleNamespace, clock: Any, data_key: Any, shares: dict[str, str]) -> Restore:
    backup = back_up(data_key, cast, clock)
    default_backend().destroy(data_key.primary_version.cka_id_bytes)
    req = open_restore(data_key, backup, cast, clock)
    return Restore.objects.get(request=req)


def refused(restore: Restore, user: Any, text: str, clock: Any, code: str) -> None:
    before = RestoreShare.objects.filter(restore=restore).count()
    with pytest.raises(ApplicationError) as excinfo:
        enter(restore.pk, user, text, clock)
    assert excinfo.value.code == code
    assert RestoreShare.objects.filter(restore=restore).count() == before
    event = AuditEvent.objects.filter(action="restore.share_refused").order_by("-seq").first()
    assert event is not None and event.details["reason"] == code and event.actor == user.get_username()
    # The message never echoes the share.
    assert text.split(":")[-1] not in excinfo.value.message


def test_a_wrong_share_is_refused(
    cast: SimpleNamespace, clock: Any, waiting_restore: Restore, shares: dict[str, str]
) -> None:
    text = shares["bob"]
    tampered = text[:-1] + ("0" if text[-1] != "0" else "1")
    refused(waiting_restore, cast.bob, tampered, clock, "share_mismatch")
    refused(waiting_restore, cast.bob, "not a share at all", clock, "share_invalid")


def test_a_share_entered_twice_is_refused(
    cast: SimpleNamespace, clock: Any, waiting_restore: Restore, shares: dict[str, str]
) -> None:
    enter(waiting_restore.pk, cast.bob, shares["bob"], clock)
    refused(waiting_restore, cast.bob, shares["bob"], clock, "share_duplicate")
    waiting_restore.refresh_from_db()
    assert waiting_restore.state == RestoreState.COLLECTING


def test_someone_elses_share_is_refused(
    cast: SimpleNamespace, clock: Any, waiting_restore: Restore, shares: dict[str, str]
) -> None:
    # carol types in bob's share: she does not hold it.
    refused(waiting_restore, cast.carol, shares["bob"], clock, "not_share_holder")
    # bob enters his own; carol cannot complete the quorum with dave's share either.
    enter(waiting_restore.pk, cast.bob, shares["bob"], clock)
    refused(waiting_restore, cast.carol, shares["dave"], clock, "not_share_holder")
    waiting_restore.refresh_from_db()
    assert waiting_restore.state == RestoreState.COLLECTING


def test_a_share_of_another_ceremony_is_refused(
    cast: SimpleNamespace, clock: Any, kek: Any, waiting_restore: Restore, shares: dict[str, str]
) -> None:
    # A later ceremony is handing its shares off; the restore keeps the ceremony it started with,
    # and a share of any other ceremony never opens it.
    from lifecycle.backups.escrow import retrieve_share
    from tests.conftest import fresh_otp

    newer = hold_escrow(kek, cast, clock)
    bob_new = retrieve_share(
        share_id=newer.shares.get(holder=cast.bob).pk, user=cast.bob, otp=fresh_otp(cast.bob, clock)
    )
    refused(waiting_restore, cast.bob, bob_new, clock, "share_wrong_ceremony")


def test_outsiders_and_wrong_otp_are_refused(
    cast: SimpleNamespace, clock: Any, waiting_restore: Restore, shares: dict[str, str]
) -> None:
    refused(waiting_restore, cast.mallory, shares["bob"], clock, "not_eligible")
    refused(waiting_restore, cast.alice, shares["bob"], clock, "not_eligible")
    with pytest.raises(ApplicationError) as excinfo:
        enter_share(restore_id=waiting_restore.pk, user=cast.bob, share_text=shares["bob"], otp="000000")
    assert excinfo.value.code == "otp_invalid"
    assert not RestoreShare.objects.filter(restore=waiting_restore).exists()


def test_too_few_shares_before_the_window_closes_restore_nothing(
    cast: SimpleNamespace, clock: Any, waiting_restore: Restore, shares: dict[str, str]
) -> None:
    version = KeyVersion.objects.get(pk=waiting_restore.backup.version_id)
    enter(waiting_restore.pk, cast.bob, shares["bob"], clock)  # M-1 = 1 share
    clock.advance(hours=5)  # past the 4-hour window
    assert expire_restores() == 1
    waiting_restore.refresh_from_db()
    assert waiting_restore.state == RestoreState.EXPIRED
    assert set(waiting_restore.entered_shares.values_list("sealed", flat=True)) == {""}
    waiting_restore.request.refresh_from_db()
    assert waiting_restore.request.state == RequestState.FAILED
    assert not default_backend().exists(version.cka_id_bytes)
    assert not Job.objects.filter(kind="restore").exists()
    assert AuditEvent.objects.filter(action="restore.expired").exists()
    # A late share is refused too.
    refused(waiting_restore, cast.carol, shares["carol"], clock, "restore_expired")


# --- Private signature keys (where the policy allows their backup) --------------------------------


def signing_key(cast: SimpleNamespace, clock: Any, algorithm: str) -> Any:
    make_policy("signing-escrowed", backup_private_keys=True)
    return generate_key(
        cast.alice,
        cast.approvers,
        clock,
        name="code-signing",
        algorithm=algorithm,
        usage="sign_verify",
        policy="signing-escrowed",
    )


def software_verify(version: Any, algorithm: str, message: bytes, signature: bytes) -> None:
    """Raises InvalidSignature unless `signature` verifies under the version's recorded public key."""
    public = serialization.load_pem_public_key(version.public_key_pem.encode())
    if algorithm.startswith("RSA"):
        public.verify(
            signature, message, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256()
        )
    else:
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("algorithm", ["RSA-2048", "EC-P256"])
def test_a_private_signature_key_restores_end_to_end_with_its_public_key(
    cast: SimpleNamespace, clock: Any, escrow: Any, shares: dict[str, str], algorithm: str
) -> None:
    key = signing_key(cast, clock, algorithm)
    version = key.primary_version
    backend = default_backend()
    before = backend.sign(version.cka_id_bytes, algorithm, b"signed before the loss")
    backup = back_up(key, cast, clock)
    assert backup.kcv == version.kcv and backup.verified_at is not None

    # Disaster: both halves of the pair are destroyed on the token behind the console's back.
    assert backend.destroy(version.cka_id_bytes) == 2

    req = open_restore(key, backup, cast, clock)
    restore = Restore.objects.get(request=req)
    enter(restore.pk, cast.bob, shares["bob"], clock)
    enter(restore.pk, cast.carol, shares["carol"], clock)

    restore.refresh_from_db()
    req.refresh_from_db()
    assert restore.state == RestoreState.RESTORED and req.state == RequestState.EXECUTED
    assert restore.restored_kcv == version.kcv
    assert Job.objects.get(kind="restore").result["created"] is True
    # Both halves are back: the public key was made again from the version's recorded PEM ...
    assert sorted(row.object_class for row in backend.inventory() if row.cka_id == version.cka_id) == [
        "private_key",
        "public_key",
    ]
    assert backend.key_check_value(version.cka_id_bytes, algorithm) == version.kcv
    assert backend.public_key_pem(version.cka_id_bytes, algorithm) == version.public_key_pem
    # ... so old signatures verify again, and the restored private key signs for the same public key.
    assert backend.verify(version.cka_id_bytes, algorithm, b"signed before the loss", before)
    after = backend.sign(version.cka_id_bytes, algorithm, b"signed after the restore")
    software_verify(version, algorithm, b"signed after the restore", after)


def test_a_private_key_restores_into_another_hsm_with_its_public_key(
    cast: SimpleNamespace, clock: Any, escrow: Any, shares: dict[str, str], other_hsm: Hsm
) -> None:
    key = signing_key(cast, clock, "EC-P256")
    version = key.primary_version
    backup = back_up(key, cast, clock)
    default_backend().destroy(version.cka_id_bytes)

    req = open_restore(key, backup, cast, clock, hsm="other")
    restore = Restore.objects.get(request=req)
    enter(restore.pk, cast.dave, shares["dave"], clock)
    enter(restore.pk, cast.bob, shares["bob"], clock)

    version.refresh_from_db()
    assert version.hsm == other_hsm
    other = other_hsm.backend()
    assert other.lookup(version.cka_id_bytes, "EC-P256").kcv == version.kcv
    signature = other.sign(version.cka_id_bytes, "EC-P256", b"on the other HSM")
    assert other.verify(version.cka_id_bytes, "EC-P256", b"on the other HSM", signature)
    software_verify(version, "EC-P256", b"on the other HSM", signature)


def test_a_lost_private_half_is_restored_beside_the_surviving_public_half(
    cast: SimpleNamespace, clock: Any, escrow: Any, shares: dict[str, str]
) -> None:
    key = signing_key(cast, clock, "RSA-2048")
    version = key.primary_version
    backend = default_backend()
    backup = back_up(key, cast, clock)
    drop_half(backend, version.cka_id_bytes, ObjectClass.PRIVATE_KEY)

    req = open_restore(key, backup, cast, clock)
    restore = Restore.objects.get(request=req)
    enter(restore.pk, cast.bob, shares["bob"], clock)
    enter(restore.pk, cast.carol, shares["carol"], clock)

    restore.refresh_from_db()
    assert restore.state == RestoreState.RESTORED
    assert objects_under(backend, version.cka_id) == 2  # one private key again, the public one kept
    signature = backend.sign(version.cka_id_bytes, "RSA-2048", b"whole again")
    software_verify(version, "RSA-2048", b"whole again", signature)


def test_a_substituted_private_key_under_the_versions_id_is_refused(
    cast: SimpleNamespace, clock: Any, escrow: Any, shares: dict[str, str]
) -> None:
    key = signing_key(cast, clock, "EC-P256")
    version = key.primary_version
    backend = default_backend()
    backup = back_up(key, cast, clock)
    # Someone replaces the private key beside the version's (genuine) public key with one of their own.
    drop_half(backend, version.cka_id_bytes, ObjectClass.PRIVATE_KEY)
    rogue_kek, rogue = secrets.token_bytes(16), secrets.token_bytes(16)
    backend.generate("AES-256", rogue_kek, usage="wrap_unwrap", label="rogue")
    backend.generate("EC-P256", rogue, usage="sign_verify", label="rogue", extractable=True)
    backend.unwrap(
        rogue_kek,
        backend.wrap(rogue_kek, rogue),
        algorithm="EC-P256",
        usage="sign_verify",
        new_cka_id=version.cka_id_bytes,
        label="rogue",
    )
    # The public half alone still gives the right key check value: only a signature tells them apart.
    assert backend.key_check_value(version.cka_id_bytes, "EC-P256") == version.kcv

    req = open_restore(key, backup, cast, clock)
    restore = Restore.objects.get(request=req)
    enter(restore.pk, cast.bob, shares["bob"], clock)
    enter(restore.pk, cast.carol, shares["carol"], clock)

    restore.refresh_from_db()
    req.refresh_from_db()
    assert restore.state == RestoreState.FAILED
    assert "holds another object under this version's CKA_ID" in restore.error
    assert req.state == RequestState.FAILED
    assert set(RestoreShare.objects.filter(restore=restore).values_list("sealed", flat=True)) == {""}
    assert AuditEvent.objects.filter(action="restore.failed").exists()


def drop_half(backend: Any, cka_id: bytes, object_class: ObjectClass) -> None:
    """Destroy one half of a pair on the token (the failure being faked), and forget cached handles."""

    def run(state: Any) -> None:
        for obj in state.session.get_objects({Attribute.ID: cka_id, Attribute.CLASS: object_class}):
            obj.destroy()

    backend._call(run)
    backend.reset()
