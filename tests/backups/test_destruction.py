"""Destruction destroys every backup of the key (and a KEK's escrow) and lists them in the certificate."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from audit.models import AuditEvent
from lifecycle.models import Backup, CeremonyState
from lifecycle.states import KeyState
from tests.backups.conftest import back_up
from tests.lifecycle.helpers import generate_key, make_policy, run_operation

pytestmark = pytest.mark.django_db


def test_destroying_a_key_wipes_its_backups_and_the_certificate_lists_them(
    cast: SimpleNamespace, clock: Any, escrow: Any
) -> None:
    make_policy("quick", destruction_wait_days=0)
    key = generate_key(cast.alice, cast.approvers, clock, name="short-lived", policy="quick")
    backup = back_up(key, cast, clock)
    run_operation("schedule_destruction", key, cast.alice, cast.approvers, clock)
    key.refresh_from_db()
    assert key.state == KeyState.DESTROYED
    backup.refresh_from_db()
    assert backup.destroyed_at is not None and backup.wrapped == ""
    listed = key.destruction_certificate.body["backups"]
    assert [(b["kind"], b["id"], b["kcv"], b["wiped"]) for b in listed] == [
        ("backup", str(backup.pk), backup.kcv, True)
    ]
    assert AuditEvent.objects.filter(action="backup.destroyed", details__backup=str(backup.pk)).exists()


def test_destroying_the_kek_destroys_its_escrow(cast: SimpleNamespace, clock: Any, kek: Any, escrow: Any) -> None:
    # A KEK under a zero-wait policy is not available through the fixture, so move it by policy change set-up.
    make_policy("quick", destruction_wait_days=0)
    kek.policy = type(kek.policy).objects.get(name="quick")
    kek.save(update_fields=["policy"])
    run_operation("schedule_destruction", kek, cast.alice, cast.approvers, clock)
    escrow.refresh_from_db()
    assert escrow.state == CeremonyState.DESTROYED and escrow.wrapped_kek == ""
    assert set(escrow.shares.values_list("sealed", flat=True)) == {""}
    kek.refresh_from_db()
    kinds = [b["kind"] for b in kek.destruction_certificate.body["backups"]]
    assert kinds == ["escrow"]
    assert not Backup.objects.exists()
