"""Checks that ask the real SoftHSM token: inventory, storage form, extractability, destruction.

Keys are made through the engine (request, two approvals, the job on the token); failures are
faked on the token itself (a rogue object, a removed half, a non-sensitive key) or in the rows.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from typing import Any

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

from compliance.checks.base import FAIL, NOT_APPLICABLE, PASS, WARN
from lifecycle.hsm import default_backend
from lifecycle.models import Backup, KeyVersion
from lifecycle.services.policies import policy_apply
from lifecycle.states import KeyState
from tests.lifecycle.helpers import destroy_now, generate_key

from .helpers import clean_token, labels, orm_key, run

pytestmark = pytest.mark.django_db


@pytest.fixture
def token(kms: Any) -> Any:
    """The session's token, rid of objects earlier tests left behind (their rows were rolled back)."""
    clean_token(kms)
    return default_backend()


@pytest.fixture
def two_keys(clock: Any, cast: Any, token: Any) -> list[Any]:
    approvers = [cast.bob, cast.carol]
    return [
        generate_key(cast.alice, approvers, clock, name="aes-key"),
        generate_key(cast.alice, approvers, clock, name="ec-key", algorithm="EC-P256", usage="sign_verify"),
    ]


def make_object(token: Any, *, label: str, sensitive: bool = True, extractable: bool = False) -> str:
    """An AES secret key object on the token that no key of the console made; returns its CKA_ID (hex)."""
    cka_id = secrets.token_bytes(16)

    def create(state: Any) -> None:
        state.session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.ID: cka_id,
                Attribute.LABEL: label,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: sensitive,
                Attribute.EXTRACTABLE: extractable,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
                Attribute.VALUE: os.urandom(32),
            }
        )

    token._call(create)
    return cka_id.hex()


# --- Inventory ------------------------------------------------------------------------------------


def test_inventory_reconciles_for_keys_made_through_the_engine(two_keys: list[Any]) -> None:
    result = run("hsm_inventory")

    assert result.status == PASS, result.offenders
    assert result.figure == (
        "2 of 2 key versions found on 1 HSM; 0 unknown objects; key check values compared for 2, 0 mismatches"
    )
    # The audit signing key (a pair) is the console's own, not an unknown object.
    assert "kms-audit-signing" in result.notes[0]


def test_inventory_fails_for_an_unknown_object_on_the_token(two_keys: list[Any], token: Any) -> None:
    rogue = make_object(token, label="rogue")

    result = run("hsm_inventory")

    assert result.status == FAIL
    [offender] = result.offenders
    assert offender.kind == "hsm_object"
    assert offender.label == "default: rogue"
    assert offender.reason == f"secret key with CKA_ID {rogue} that the console does not know"
    assert "1 unknown object" in result.figure


def test_inventory_fails_for_a_missing_object_and_a_missing_half(
    clock: Any, cast: Any, two_keys: list[Any], token: Any
) -> None:
    ghost = orm_key("ghost", kms=cast.kms, owner=cast.alice, now=clock.now())
    ec_version = two_keys[1].primary_version

    def drop_public_half(state: Any) -> None:
        for obj in state.session.get_objects(
            {Attribute.ID: ec_version.cka_id_bytes, Attribute.CLASS: ObjectClass.PUBLIC_KEY}
        ):
            obj.destroy()

    token._call(drop_public_half)
    token.reset()  # forget cached handles, as another process would not have them

    result = run("hsm_inventory")

    assert result.status == FAIL
    reasons = {o.label: o.reason for o in result.offenders}
    assert reasons == {
        "ghost v1": f"recorded on HSM default (CKA_ID {ghost.primary_version.cka_id}) but not found on the token",
        "ec-key v1": "the public key is missing on HSM default",
    }
    assert result.figure.startswith("1 of 3 key versions found on 1 HSM")


def test_inventory_fails_when_a_key_check_value_does_not_match(two_keys: list[Any]) -> None:
    version = two_keys[0].primary_version
    KeyVersion.objects.filter(pk=version.pk).update(kcv="000000")

    result = run("hsm_inventory")

    assert result.status == FAIL
    [offender] = result.offenders
    assert offender.label == "aes-key v1"
    assert offender.reason == (
        f"the HSM computes key check value {version.kcv}, the console recorded 000000 (a substituted or altered key)"
    )
    assert result.figure.endswith("key check values compared for 2, 1 mismatch")


def test_key_check_values_are_compared_for_a_daily_window_of_versions(two_keys: list[Any]) -> None:
    result = run("hsm_inventory", kcv_sample=1)
    assert result.status == PASS
    assert "key check values compared for 1, 0 mismatches" in result.figure
    assert any("window of 1 versions that moves every day" in note for note in result.notes)


def test_an_unreadable_hsm_fails_the_hsm_checks(clock: Any, cast: Any, token: Any) -> None:
    from lifecycle.models import Hsm

    broken = Hsm.objects.create(
        name="broken",
        module=cast.kms.hsm.module,
        token_label="no-such-token",
        pin_env="KMS_HSM_PIN",
        registered_at=clock.now(),
    )
    key = orm_key("on-broken", kms=cast.kms, owner=cast.alice, now=clock.now())
    KeyVersion.objects.filter(pk=key.primary_version.pk).update(hsm=broken)

    result = run("hsm_inventory")

    assert result.status == FAIL
    assert "broken" in labels(result)
    assert run("hsm_storage").status == FAIL


# --- Storage form ---------------------------------------------------------------------------------


def test_storage_passes_when_every_key_is_a_sensitive_hsm_object(two_keys: list[Any]) -> None:
    result = run("hsm_storage")
    assert result.status == PASS
    assert result.figure == "2 of 2 live key versions are sensitive objects inside their HSM"


def test_storage_fails_for_a_readable_key_and_for_a_key_not_on_its_hsm(clock: Any, cast: Any, token: Any) -> None:
    weak = make_object(token, label="weak", sensitive=False, extractable=True)
    orm_key("readable", kms=cast.kms, owner=cast.alice, now=clock.now(), cka_id=weak)
    orm_key("nowhere", kms=cast.kms, owner=cast.alice, now=clock.now())

    result = run("hsm_storage")

    assert result.status == FAIL
    reasons = {o.label: o.reason for o in result.offenders}
    assert reasons == {
        "readable v1": "its HSM object is not marked sensitive (CKA_SENSITIVE), so its value could be read out",
        "nowhere v1": "no secret or private key object on HSM default: where is the key?",
    }


# --- Extractability -------------------------------------------------------------------------------


def test_extractable_passes_where_the_policy_allows_backup(two_keys: list[Any]) -> None:
    result = run("extractable")
    assert result.status == PASS
    assert result.figure == (
        "2 of 2 live key versions are extractable (wrappable, never readable), 2 of them under a policy that allows "
        "backup or export"
    )


def test_extractable_fails_against_a_strict_policy_or_when_the_hsm_disagrees(clock: Any, cast: Any, token: Any) -> None:
    strict = policy_apply(name="strict", settings={"backup": "forbidden", "exportable": False}, actor=None)
    orm_key("loose", kms=cast.kms, owner=cast.alice, now=clock.now(), policy=strict.policy, extractable=True)
    sneaky = make_object(token, label="sneaky", extractable=True)
    orm_key("sneaky", kms=cast.kms, owner=cast.alice, now=clock.now(), cka_id=sneaky, extractable=False)

    result = run("extractable")

    assert result.status == FAIL
    reasons = {o.label: o.reason for o in result.offenders}
    assert reasons == {
        "loose v1": f"extractable, but policy {strict.ref} forbids both backup and export",
        "sneaky v1": "the HSM object is extractable although the console created it non-extractable",
    }


# --- Destruction ----------------------------------------------------------------------------------


def test_destruction_passes_for_a_key_destroyed_by_the_worker(clock: Any, cast: Any, token: Any) -> None:
    key = generate_key(cast.alice, [cast.bob, cast.carol], clock, name="doomed")
    cka_id = key.primary_version.cka_id
    destroy_now(key, cast.alice, [cast.bob, cast.carol], clock)
    assert key.state == KeyState.DESTROYED

    result = run("destruction")

    assert not token.exists(bytes.fromhex(cka_id))
    assert result.status == PASS, result.offenders
    assert result.figure == (
        "1 of 1 destroyed keys certified, with no surviving HSM object or backup (1 destroyed versions checked)"
    )


def test_destruction_is_not_applicable_before_any_destruction(kms: Any, token: Any) -> None:
    assert run("destruction").status == NOT_APPLICABLE


def test_destruction_fails_without_certificate_with_a_surviving_object_or_backup(
    clock: Any, cast: Any, token: Any
) -> None:
    now = clock.now()
    survivor = make_object(token, label="survivor")
    orm_key("half-dead", kms=cast.kms, owner=cast.alice, now=now, state=KeyState.DESTROYED, cka_id=survivor)
    backed_up = orm_key("backed-up", kms=cast.kms, owner=cast.alice, now=now, state=KeyState.DESTROYED)
    kek = orm_key("kek", kms=cast.kms, owner=cast.alice, now=now, usage="wrap_unwrap")
    Backup.objects.create(
        version=backed_up.primary_version,
        kek_version=kek.primary_version,
        wrapped="d3JhcHBlZA==",
        kcv="a1b2c3",
        created_at=now,
    )
    late = orm_key("late", kms=cast.kms, owner=cast.alice, now=now)
    late.destroy_after = now - dt.timedelta(days=3)
    late.save()

    result = run("destruction")

    assert result.status == FAIL
    found = {(o.kind, o.label, o.severity) for o in result.offenders}
    assert found == {
        ("key", "half-dead", FAIL),
        ("version", "half-dead v1", FAIL),
        ("key", "backed-up", FAIL),
        ("backup", "backed-up v1", FAIL),
        ("key", "late", WARN),
    }
    by_kind = {(o.kind, o.label): o.reason for o in result.offenders}
    assert by_kind[("version", "half-dead v1")] == "destroyed on 2026-12-04, but its object is still on HSM default"
    assert by_kind[("key", "half-dead")] == "destroyed without a certificate of destruction"
    assert by_kind[("key", "late")] == "due for destruction since 2026-12-01 and not destroyed yet"
    assert result.figure.startswith("0 of 2 destroyed keys certified")
    # The inventory check sees the survivor too: it belongs to a destroyed version.
    inventory = run("hsm_inventory")
    assert any("destroyed in the console, but is still on the token" in o.reason for o in inventory.offenders)
