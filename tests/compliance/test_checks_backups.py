"""Backups: present where the policy requires them, recently verified, absent where it forbids them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from compliance.checks.base import FAIL, NOT_APPLICABLE, PASS, WARN
from lifecycle.models import Backup
from lifecycle.services.policies import policy_apply

from .helpers import orm_key, run

pytestmark = pytest.mark.django_db


@pytest.fixture
def required(kms: Any) -> Any:
    return policy_apply(name="must-backup", settings={"backup": "required"}, actor=None)


@pytest.fixture
def kek(clock: Any, cast: Any) -> Any:
    return orm_key("backup-kek", kms=cast.kms, owner=cast.alice, now=clock.now(), usage="wrap_unwrap").primary_version


def backup(version: Any, kek: Any, now: dt.datetime, **fields: Any) -> Backup:
    values = {"wrapped": "d3JhcHBlZA==", "kcv": version.kcv, "created_at": now - dt.timedelta(days=5), **fields}
    return Backup.objects.create(version=version, kek_version=kek, **values)


def test_backups_are_not_applicable_when_no_policy_requires_them(clock: Any, cast: Any) -> None:
    orm_key("plain", kms=cast.kms, owner=cast.alice, now=clock.now())
    result = run("backups")
    assert result.status == NOT_APPLICABLE
    assert result.figure == "0 of 0 key versions whose policy requires a backup have one verified in the last 30 days"


def test_backups_pass_when_every_required_backup_exists_and_was_verified(
    clock: Any, cast: Any, required: Any, kek: Any
) -> None:
    now = clock.now()
    key = orm_key("precious", kms=cast.kms, owner=cast.alice, now=now, policy=required.policy)
    backup(key.primary_version, kek, now, verified_at=now - dt.timedelta(days=1))

    result = run("backups")

    assert result.status == PASS, result.offenders
    assert result.figure == "1 of 1 key versions whose policy requires a backup have one verified in the last 30 days"


def test_backups_fail_when_missing_and_warn_when_not_recently_verified(
    clock: Any, cast: Any, required: Any, kek: Any
) -> None:
    now = clock.now()
    orm_key("unprotected", kms=cast.kms, owner=cast.alice, now=now, policy=required.policy)
    stale = orm_key("stale", kms=cast.kms, owner=cast.alice, now=now, policy=required.policy)
    backup(stale.primary_version, kek, now, verified_at=now - dt.timedelta(days=45))
    never = orm_key("never", kms=cast.kms, owner=cast.alice, now=now, policy=required.policy)
    backup(never.primary_version, kek, now)
    # A destroyed backup is no backup.
    gone = orm_key("gone", kms=cast.kms, owner=cast.alice, now=now, policy=required.policy)
    backup(gone.primary_version, kek, now, verified_at=now, destroyed_at=now)

    result = run("backups")

    assert result.status == FAIL
    reasons = {o.label: (o.severity, o.reason) for o in result.offenders}
    assert reasons == {
        "unprotected v1": (FAIL, f"no backup although policy {required.ref} requires one"),
        "gone v1": (FAIL, f"no backup although policy {required.ref} requires one"),
        "stale v1": (WARN, "its backup was last verified on 2026-10-20, more than 30 days ago"),
        "never v1": (WARN, "its backup was never verified by a restore test"),
    }
    assert result.figure.startswith("0 of 4 key versions")


def test_backups_fail_for_a_wrong_kcv_a_failed_restore_test_a_forbidden_or_a_private_signing_backup(
    clock: Any, cast: Any, required: Any, kek: Any
) -> None:
    now = clock.now()
    odd = orm_key("odd-kcv", kms=cast.kms, owner=cast.alice, now=now, policy=required.policy)
    backup(odd.primary_version, kek, now, kcv="ffffff", verified_at=now)
    broken = orm_key("broken", kms=cast.kms, owner=cast.alice, now=now, policy=required.policy)
    backup(broken.primary_version, kek, now, verified_at=now - dt.timedelta(days=2), verify_failed_at=now)
    forbidden = policy_apply(name="no-backups", settings={"backup": "forbidden"}, actor=None)
    banned = orm_key("banned", kms=cast.kms, owner=cast.alice, now=now, policy=forbidden.policy)
    backup(banned.primary_version, kek, now, verified_at=now)
    signer = orm_key("signer", kms=cast.kms, owner=cast.alice, now=now, algorithm="EC-P256", usage="sign_verify")
    backup(signer.primary_version, kek, now, verified_at=now)

    result = run("backups")

    assert result.status == FAIL
    reasons = {o.label: o.reason for o in result.offenders}
    assert reasons == {
        "odd-kcv v1": "a backup's key check value differs from the version's",
        "broken v1": "the last restore test of a backup failed on 2026-12-04",
        "banned v1": f"1 backup(s) exist though policy {forbidden.ref} forbids backups",
        "signer v1": "a private signature key is backed up without its policy allowing it (NIST SP 800-57 8.2.2)",
    }
