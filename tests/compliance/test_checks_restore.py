"""The HSM checks and a restore into another registered HSM agree (backup and recovery, issue 9).

A restore elsewhere moves a version to the target HSM: the inventory check must then find it there
(both halves of a pair), report nothing unknown or missing, and, when the old HSM still holds the
object, say that it is a copy of a version the console records on the other HSM.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from compliance.checks.base import PASS, WARN
from compliance.checks.hsm import infrastructure_labels
from lifecycle.hsm import default_backend
from lifecycle.models import Hsm, KeyVersion, Restore, RestoreState
from tests.backups.conftest import back_up, enter, hold_escrow, open_restore, take_shares
from tests.lifecycle.helpers import generate_key, make_policy

from .helpers import clean_token, run

pytestmark = pytest.mark.django_db


def clean_other_token(hsm: Hsm) -> None:
    """Objects earlier tests left on the second token (their rows were rolled back), as clean_token does."""
    known = set(KeyVersion.objects.values_list("cka_id", flat=True))
    keep = infrastructure_labels()
    backend = hsm.backend()
    for info in backend.inventory():
        if info.cka_id and info.cka_id not in known and info.label not in keep:
            backend.destroy(bytes.fromhex(info.cka_id))


@pytest.fixture
def other_hsm(cast: Any) -> Hsm:
    """The session's second token, registered (set-up; in production an approved hsm_change)."""
    hsm = Hsm.objects.create(
        name="other",
        module=settings.KMS_PKCS11_MODULE,
        token_label=cast.kms.token.other_label,
        pin_env="KMS_HSM2_PIN",
        registered_at=timezone.now(),
    )
    clean_token(cast.kms)
    clean_other_token(hsm)
    return hsm


def restore_into(
    key: Any, backup: Any, hsm: Hsm, people: SimpleNamespace, shares: dict[str, str], clock: Any
) -> KeyVersion:
    req = open_restore(key, backup, people, clock, hsm=hsm.name)
    restore = Restore.objects.get(request=req)
    enter(restore.pk, people.bob, shares["bob"], clock)
    enter(restore.pk, people.carol, shares["carol"], clock)
    restore.refresh_from_db()
    assert restore.state == RestoreState.RESTORED, restore.error
    return KeyVersion.objects.select_related("hsm").get(pk=key.primary_version_id)


def test_versions_restored_into_another_hsm_reconcile_and_a_copy_left_behind_is_named(
    cast: Any, clock: Any, other_hsm: Hsm
) -> None:
    people = SimpleNamespace(
        alice=cast.alice, bob=cast.bob, carol=cast.carol, approvers=[cast.bob, cast.carol, cast.dave]
    )
    kek = generate_key(cast.alice, people.approvers, clock, name="backup-kek", usage="wrap_unwrap")
    shares = take_shares(hold_escrow(kek, people, clock), clock)
    make_policy("signing-escrowed", backup_private_keys=True)
    data = generate_key(cast.alice, people.approvers, clock, name="payments")
    signer = generate_key(
        cast.alice,
        people.approvers,
        clock,
        name="code-signing",
        algorithm="EC-P256",
        usage="sign_verify",
        policy="signing-escrowed",
    )
    backups = [back_up(key, people, clock) for key in (data, signer)]
    # The data key's object is lost on the default HSM; the signing key's is still there.
    default_backend().destroy(data.primary_version.cka_id_bytes)

    moved = [
        restore_into(key, backup, other_hsm, people, shares, clock)
        for key, backup in zip((data, signer), backups, strict=True)
    ]
    assert [version.hsm.name for version in moved] == ["other", "other"]

    result = run("hsm_inventory")
    # Nothing unknown, nothing missing: both versions (the pair with both halves) are found on "other".
    # The old HSM's copy of the signing key is named for what it is, as a warning.
    assert result.status == WARN, result.offenders
    [offender] = result.offenders
    assert offender.kind == "hsm_object" and offender.severity == WARN
    assert offender.label.startswith("default: ")
    assert offender.reason == "a copy of code-signing v1, which the console records on HSM other"
    assert result.figure == (
        "3 of 3 key versions found on 2 HSMs; 0 unknown objects; key check values compared for 3, 0 mismatches; "
        "1 copy of versions the console records on another HSM"
    )
    assert run("hsm_storage").status == PASS

    # Once the old HSM's copy is destroyed, the estate reconciles fully.
    default_backend().destroy(moved[1].cka_id_bytes)
    result = run("hsm_inventory")
    assert result.status == PASS, result.offenders
    assert result.figure == (
        "3 of 3 key versions found on 2 HSMs; 0 unknown objects; key check values compared for 3, 0 mismatches"
    )
