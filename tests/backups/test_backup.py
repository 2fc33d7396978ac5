"""Backups: dual-controlled, by policy and NIST key-type rules, wrapped under the escrowed KEK."""

from __future__ import annotations

import base64
import hashlib
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from approvals.models import RequestState
from approvals.services import open_request
from audit.models import AuditEvent
from kms_console.lib.errors import ApplicationError
from lifecycle.backups.backup import verify_sample
from lifecycle.hsm import default_backend
from lifecycle.models import Backup, Job, JobStatus, Policy
from lifecycle.services.jobs import run_job
from tests.backups.conftest import back_up
from tests.conftest import approve
from tests.lifecycle.helpers import generate_key, make_policy

pytestmark = pytest.mark.django_db


def open_backup(key: Any, cast: SimpleNamespace, **parameters: Any) -> Any:
    return open_request(
        operation="backup", requester=cast.alice, justification="DR copy", target_id=str(key.pk), parameters=parameters
    )


@pytest.mark.parametrize(
    ("algorithm", "usage"), [("AES-256", "encrypt_decrypt"), ("AES-128", "encrypt_decrypt"), ("HMAC-SHA256", "mac")]
)
def test_it_backs_up_a_version_under_the_escrowed_kek(
    cast: SimpleNamespace, clock: Any, escrow: Any, algorithm: str, usage: str
) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="k", algorithm=algorithm, usage=usage)
    version = key.primary_version
    backup = back_up(key, cast, clock)
    assert backup.version == version
    assert backup.kek_version == escrow.kek_version
    assert backup.kcv == version.kcv
    assert backup.verified_at is not None  # the job test-restored it before keeping it
    blob = base64.b64decode(backup.wrapped)
    assert len(blob) == 8 + {"AES-256": 32, "AES-128": 16, "HMAC-SHA256": 32}[algorithm]  # RFC 3394
    # The backup restores under the KEK to the same key.
    assert default_backend().unwrap_check(escrow.kek_version.cka_id_bytes, blob, algorithm=algorithm) == version.kcv
    event = AuditEvent.objects.get(action="backup.created")
    assert event.details["kcv"] == version.kcv and backup.wrapped not in str(event.details)
    job = Job.objects.get(kind="backup")
    assert "wrapped" not in job.result


def test_it_needs_two_custodians(cast: SimpleNamespace, clock: Any, escrow: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="k")
    req = open_backup(key, cast)
    assert req.required_approvals == 2
    approve(req, cast.bob, clock=clock)
    assert req.state == RequestState.PENDING
    assert not Backup.objects.exists()


def test_a_private_signature_key_is_not_backed_up(cast: SimpleNamespace, clock: Any, escrow: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="signer", algorithm="EC-P256", usage="sign_verify")
    with pytest.raises(ApplicationError) as excinfo:
        open_backup(key, cast)
    assert excinfo.value.code == "backup_not_allowed"
    assert "NIST SP 800-57" in excinfo.value.message


def test_a_policy_may_allow_private_key_backups_explicitly(cast: SimpleNamespace, clock: Any, escrow: Any) -> None:
    make_policy("signing-escrowed", backup_private_keys=True)
    key = generate_key(
        cast.alice,
        cast.approvers,
        clock,
        name="signer",
        algorithm="EC-P256",
        usage="sign_verify",
        policy="signing-escrowed",
    )
    req = open_backup(key, cast)
    assert req.state == RequestState.PENDING


def test_a_policy_that_forbids_backups_is_obeyed(cast: SimpleNamespace, clock: Any, escrow: Any) -> None:
    make_policy("no-backups", backup="forbidden")
    key = generate_key(cast.alice, cast.approvers, clock, name="k", policy="no-backups")
    with pytest.raises(ApplicationError) as excinfo:
        open_backup(key, cast)
    assert excinfo.value.code == "backup_not_allowed"


def test_no_backup_without_an_escrowed_kek(cast: SimpleNamespace, clock: Any, kek: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="k")
    with pytest.raises(ApplicationError) as excinfo:
        open_backup(key, cast)
    assert excinfo.value.code == "no_backup_kek"


def test_the_kek_itself_and_a_second_copy_are_refused(cast: SimpleNamespace, clock: Any, escrow: Any, kek: Any) -> None:
    with pytest.raises(ApplicationError) as excinfo:
        open_backup(kek, cast)
    assert excinfo.value.code == "backup_not_allowed"
    key = generate_key(cast.alice, cast.approvers, clock, name="k")
    back_up(key, cast, clock)
    with pytest.raises(ApplicationError) as again:
        open_backup(key, cast)
    assert again.value.code == "backed_up"


def test_bad_parameters_are_refused(cast: SimpleNamespace, clock: Any, escrow: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="k")
    for parameters, field in (({"version": 7}, "version"), ({"version": "1"}, "version"), ({"kek": "x"}, "kek")):
        with pytest.raises(ApplicationError) as excinfo:
            open_backup(key, cast, **parameters)
        assert field in excinfo.value.details
    with pytest.raises(ApplicationError) as role:
        open_request(operation="backup", requester=cast.bob, justification="x", target_id=str(key.pk))
    assert role.value.code == "role_required"


def test_a_backup_task_delivered_twice_makes_one_row(cast: SimpleNamespace, clock: Any, escrow: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="k")
    # Approve without running the on-commit dispatch: the job waits in the queue.
    req = open_backup(key, cast)
    approve(req, cast.bob, cast.carol, clock=clock)
    job = Job.objects.get(kind="backup")
    assert job.status == JobStatus.QUEUED
    run_job(job.pk)
    run_job(job.pk)
    assert Backup.objects.count() == 1
    # A worker that died after completing the HSM step but whose lease ran out runs it again:
    # the pre-chosen backup id keeps it to one row.
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, started_at=clock.now().replace(year=2020))
    run_job(job.pk)
    assert Backup.objects.count() == 1
    req.refresh_from_db()
    assert req.state == RequestState.EXECUTED


def test_verification_restore_tests_a_sample_and_records_failures(
    cast: SimpleNamespace, clock: Any, escrow: Any
) -> None:
    good = back_up(generate_key(cast.alice, cast.approvers, clock, name="good"), cast, clock)
    bad = back_up(generate_key(cast.alice, cast.approvers, clock, name="bad"), cast, clock)
    Backup.objects.filter(pk__in=[good.pk, bad.pk]).update(verified_at=None)
    # Someone swaps the blob in the database: the restore test notices.
    Backup.objects.filter(pk=bad.pk).update(wrapped=good.wrapped)
    clock.advance(days=1)
    assert verify_sample() == {"verified": 1, "failed": 1}
    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.verified_at == clock.now()
    assert bad.verified_at is None and bad.verify_failed_at == clock.now()
    assert "differs" in bad.verify_error
    assert AuditEvent.objects.filter(action="backup.verification_failed").count() == 1


def test_the_beat_task_is_scheduled_and_runs(cast: SimpleNamespace, clock: Any, escrow: Any) -> None:
    from django.conf import settings

    from lifecycle.backups.tasks import verify_backups

    assert settings.CELERY_BEAT_SCHEDULE["backups-verify"]["task"] == "lifecycle.backups.tasks.verify_backups"
    back_up(generate_key(cast.alice, cast.approvers, clock, name="k"), cast, clock)
    Backup.objects.update(verified_at=None)
    assert verify_backups.delay().get() == {"verified": 1, "failed": 0, "restores_closed": 0}


# --- Private signature keys, where the policy allows their backup ---------------------------------


def signing_key(cast: SimpleNamespace, clock: Any, name: str, algorithm: str) -> Any:
    if not Policy.objects.filter(name="signing-escrowed").exists():
        make_policy("signing-escrowed", backup_private_keys=True)
    return generate_key(
        cast.alice,
        cast.approvers,
        clock,
        name=name,
        algorithm=algorithm,
        usage="sign_verify",
        policy="signing-escrowed",
    )


@pytest.mark.parametrize("algorithm", ["RSA-2048", "EC-P256"])
def test_a_private_key_backup_is_proved_to_restore_to_the_versions_public_key(
    cast: SimpleNamespace, clock: Any, escrow: Any, algorithm: str
) -> None:
    key = signing_key(cast, clock, "signer", algorithm)
    version = key.primary_version
    backup = back_up(key, cast, clock)

    # The key check value of a pair is the SHA-256 of its public key (SPKI DER).
    der = serialization.load_pem_public_key(version.public_key_pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert backup.kcv == version.kcv == hashlib.sha256(der).hexdigest()
    # The job test-restored it before keeping it: the unwrapped private key signed for that public key.
    assert backup.verified_at is not None
    assert Job.objects.get(kind="backup").result["verified"] is True
    kek = escrow.kek_version.cka_id_bytes
    blob = base64.b64decode(backup.wrapped)
    assert (
        default_backend().unwrap_check(kek, blob, algorithm=algorithm, public_key_pem=version.public_key_pem)
        == version.kcv
    )


def test_verification_of_private_key_backups_catches_a_swapped_blob(
    cast: SimpleNamespace, clock: Any, escrow: Any
) -> None:
    good = back_up(signing_key(cast, clock, "signer-a", "EC-P256"), cast, clock)
    bad = back_up(signing_key(cast, clock, "signer-b", "EC-P256"), cast, clock)
    Backup.objects.filter(pk__in=[good.pk, bad.pk]).update(verified_at=None)
    # Someone swaps the blob: it unwraps fine, but to a private key of another pair.
    Backup.objects.filter(pk=bad.pk).update(wrapped=good.wrapped)
    clock.advance(days=1)

    assert verify_sample() == {"verified": 1, "failed": 1}
    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.verified_at == clock.now()
    assert bad.verified_at is None and bad.verify_failed_at == clock.now()
    assert bad.verify_error == "the private key does not belong to the recorded public key"
    event = AuditEvent.objects.get(action="backup.verification_failed")
    assert event.details["backup"] == str(bad.pk)
