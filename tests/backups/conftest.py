"""Fixtures of the backup tests: an escrowed backup KEK, keys to back up, and helpers.

Everything runs through the real engine on the session's real SoftHSM token: requests are opened,
custodians approve with their TOTP codes, jobs run eagerly when the transaction's on-commit
callbacks fire.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from django.utils import timezone

from approvals.models import ApprovalRequest
from approvals.services import open_request
from lifecycle.backups.escrow import retrieve_share
from lifecycle.backups.restore import enter_share
from lifecycle.models import Backup, EscrowCeremony, Hsm, Key
from tests.conftest import approve, fresh_otp
from tests.lifecycle.helpers import generate_key, on_commit, run_operation

# Playwright on Debian's Chromium, configured once in tests/ui (fixtures are found by name here).
from tests.ui.conftest import browser_context_args, browser_type_launch_args  # noqa: F401


@pytest.fixture
def cast(alice: Any, bob: Any, carol: Any, dave: Any, olivia: Any, erin: Any, mallory: Any) -> SimpleNamespace:
    return SimpleNamespace(
        alice=alice,
        bob=bob,
        carol=carol,
        dave=dave,
        olivia=olivia,
        erin=erin,
        mallory=mallory,
        approvers=[bob, carol, dave],
    )


@pytest.fixture
def kek(cast: SimpleNamespace, clock: Any) -> Key:
    """The key that will become the backup KEK (active AES-256 wrap/unwrap, extractable)."""
    return generate_key(cast.alice, cast.approvers, clock, name="backup-kek", algorithm="AES-256", usage="wrap_unwrap")


def hold_escrow(
    kek: Key,
    cast: SimpleNamespace,
    clock: Any,
    *,
    holders: tuple[str, ...] = ("bob", "carol", "dave"),
    threshold: int = 2,
) -> EscrowCeremony:
    run_operation(
        "escrow",
        kek,
        cast.alice,
        cast.approvers,
        clock,
        parameters={"custodians": list(holders), "threshold": threshold},
    )
    return EscrowCeremony.objects.filter(kek_version__key=kek).order_by("-created_at").first()


@pytest.fixture
def escrow(kek: Key, cast: SimpleNamespace, clock: Any) -> EscrowCeremony:
    """A 2-of-3 escrow of the KEK among bob, carol and dave."""
    return hold_escrow(kek, cast, clock)


def take_shares(ceremony: EscrowCeremony, clock: Any) -> dict[str, str]:
    """Every holder retrieves their share (once); returns username -> share text."""
    texts = {}
    for share in ceremony.shares.select_related("holder").order_by("index"):
        holder = share.holder
        texts[holder.get_username()] = retrieve_share(share_id=share.pk, user=holder, otp=fresh_otp(holder, clock))
    return texts


@pytest.fixture
def shares(escrow: EscrowCeremony, clock: Any) -> dict[str, str]:
    return take_shares(escrow, clock)


def back_up(key: Key, cast: SimpleNamespace, clock: Any, **parameters: Any) -> Backup:
    run_operation("backup", key, cast.alice, cast.approvers, clock, parameters=parameters)
    return Backup.objects.filter(version__key=key).order_by("-created_at").first()


def open_restore(key: Key, backup: Backup, cast: SimpleNamespace, clock: Any, **parameters: Any) -> ApprovalRequest:
    """Open and approve a restore: the share window opens."""
    with on_commit():
        req = open_request(
            operation="restore",
            requester=cast.alice,
            justification="the HSM object is gone",
            target_id=str(key.pk),
            parameters={"backup": str(backup.pk), **parameters},
        )
        approve(req, *cast.approvers[: req.required_approvals], clock=clock)
    return req


def enter(restore_id: Any, user: Any, text: str, clock: Any) -> Any:
    with on_commit():
        return enter_share(restore_id=restore_id, user=user, share_text=text, otp=fresh_otp(user, clock))


@pytest.fixture
def other_hsm(kms: Any) -> Hsm:
    """The session's second token, registered (set-up; in production an approved hsm_change)."""
    from django.conf import settings

    return Hsm.objects.create(
        name="other",
        module=settings.KMS_PKCS11_MODULE,
        token_label=kms.token.other_label,
        pin_env="KMS_HSM2_PIN",
        registered_at=timezone.now(),
    )


@pytest.fixture
def import_key(kms: Any) -> bytes:
    """The default HSM's import key, as `manage.py kms_setup` makes it (reads never make it)."""
    from lifecycle.backups.distribution import create_import_key

    return create_import_key(hsm=kms.hsm)


@contextlib.contextmanager
def jobs_held_back(monkeypatch: Any) -> Iterator[None]:
    """Jobs queued in this block are not sent to the (eager) broker: the test runs them itself."""
    from lifecycle.services import jobs

    with monkeypatch.context() as patch:
        patch.setattr(jobs, "dispatch", lambda job_id: None)
        yield
