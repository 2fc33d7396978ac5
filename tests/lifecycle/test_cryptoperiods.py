"""Cryptoperiods: Table 1 defaults by key type, policy overrides, and what the beat sweep does with them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings

from approvals.models import ApprovalRequest, RequestState
from kms_console.lib.errors import Conflict
from lifecycle.cryptoperiods import DAYS_PER_MONTH, DEFAULTS
from lifecycle.models import Job, JobKind, JobStatus, KeyTransition
from lifecycle.states import KeyState
from lifecycle.usage import usage_denial
from tests.lifecycle.helpers import (
    KEY_TYPE_IDS,
    KEY_TYPES,
    generate_key,
    make_policy,
    run_operation,
    run_sweep,
    token_ids,
)

pytestmark = pytest.mark.django_db

DAY = dt.timedelta(days=1)
# Days from activation that standard gives each of the catalogue's key types (SP 800-57 Table 1).
STANDARD_PERIODS = {
    ("AES-256", "encrypt_decrypt"): (730, 1825),
    ("AES-256", "wrap_unwrap"): (730, 1825),
    ("HMAC-SHA256", "mac"): (730, 1825),
    ("RSA-2048", "sign_verify"): (1095, 2190),
    ("EC-P256", "sign_verify"): (1095, 2190),
}


def test_the_default_periods_follow_table_1_of_the_catalog() -> None:
    table = {
        row["id"]: row
        for row in yaml.safe_load(Path(settings.KMS_CONTROLS_FILE).read_text())["cryptoperiods"]["key_types"]
    }
    for period in DEFAULTS.values():
        row = table[period.key_type]
        assert period.originator_days == round(row["max_oup_months"] * DAYS_PER_MONTH)
        if "max_rup_months_after_oup_end" in row:  # symmetric keys: RUP <= OUP + 3 years
            expected = round((row["max_oup_months"] + row["max_rup_months_after_oup_end"]) * DAYS_PER_MONTH)
            assert period.recipient_days == expected


@pytest.mark.parametrize(("algorithm", "usage"), KEY_TYPES, ids=KEY_TYPE_IDS)
def test_activation_starts_the_standard_periods_of_the_key_type(
    cast: Any, clock: Any, algorithm: str, usage: str
) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, algorithm=algorithm, usage=usage)
    version = key.primary_version
    originator, recipient = STANDARD_PERIODS[(algorithm, usage)]
    assert version.originator_until == clock.now() + originator * DAY
    assert version.recipient_until == clock.now() + recipient * DAY


def test_a_policy_sets_its_own_periods(cast: Any, clock: Any) -> None:
    make_policy("short", originator_period_days=10, recipient_period_days=20)
    key = generate_key(cast.alice, cast.approvers, clock, policy="short")
    version = key.primary_version
    assert (version.originator_until, version.recipient_until) == (clock.now() + 10 * DAY, clock.now() + 20 * DAY)


@pytest.mark.parametrize(("algorithm", "usage"), KEY_TYPES, ids=KEY_TYPE_IDS)
def test_the_sweep_deactivates_a_key_past_its_originator_period_and_usage_follows(
    cast: Any, clock: Any, algorithm: str, usage: str
) -> None:
    make_policy("short", originator_period_days=10, recipient_period_days=20)
    key = generate_key(cast.alice, cast.approvers, clock, policy="short", algorithm=algorithm, usage=usage)
    version = key.primary_version
    protect, process = {
        "encrypt_decrypt": ("encrypt", "decrypt"),
        "wrap_unwrap": ("encrypt", "decrypt"),
        "mac": ("mac", "verify_mac"),
        "sign_verify": ("sign", "verify"),
    }[usage]

    clock.advance(days=10, seconds=-1)
    assert run_sweep(clock)["deactivated"] == 0
    if usage != "wrap_unwrap":  # a KEK wraps keys; it never encrypts data
        assert usage_denial(key, version, protect, clock.now()) is None

    clock.advance(seconds=1)
    assert run_sweep(clock)["deactivated"] == 1
    key.refresh_from_db()
    version.refresh_from_db()
    assert (key.state, version.state) == (KeyState.DEACTIVATED, KeyState.DEACTIVATED)  # the key follows its primary
    changes = KeyTransition.objects.filter(key=key, to_state=KeyState.DEACTIVATED)
    assert {(c.version_id, c.nist_transition, c.actor_name, c.reason) for c in changes} == {
        (None, 8, "system", "originator-usage period ended"),
        (version.pk, 8, "system", "originator-usage period ended"),
    }
    if usage != "wrap_unwrap":
        assert usage_denial(key, version, protect, clock.now()) == f"key k is deactivated and can no longer {protect}"
        assert usage_denial(key, version, process, clock.now()) is None  # still inside the recipient period
        clock.advance(days=10)
        assert (
            usage_denial(key, version, process, clock.now()) == "version 1 of key k is past its recipient-usage period"
        )
    assert run_sweep(clock)["deactivated"] == 0  # nothing twice


def test_a_suspended_key_past_its_originator_period_cannot_be_resumed_only_deactivated(cast: Any, clock: Any) -> None:
    make_policy("short", originator_period_days=10, recipient_period_days=20)
    key = generate_key(cast.alice, cast.approvers, clock, policy="short")
    run_operation("suspend", key, cast.alice, cast.approvers, clock)
    clock.advance(days=11)
    run_sweep(clock)
    key.refresh_from_db()
    assert key.state == KeyState.SUSPENDED  # the key stays suspended; its version's period ended
    assert key.primary_version.state == KeyState.DEACTIVATED

    resume = run_operation("resume", key, cast.alice, cast.approvers, clock)
    assert resume.state == RequestState.FAILED
    assert "originator-usage period ended" in resume.error
    assert key.state == KeyState.SUSPENDED
    deactivate = run_operation("deactivate", key, cast.alice, cast.approvers, clock)
    assert deactivate.state == RequestState.EXECUTED
    assert key.state == KeyState.DEACTIVATED


def test_the_sweep_rotates_on_the_policys_rotation_period_without_a_request(cast: Any, clock: Any) -> None:
    make_policy("rotating", auto_rotate=True, rotation_period_days=30, originator_period_days=60)
    key = generate_key(cast.alice, cast.approvers, clock, policy="rotating", algorithm="EC-P256", usage="sign_verify")
    v1 = key.primary_version
    requests = ApprovalRequest.objects.count()

    clock.advance(days=30, seconds=-1)
    assert run_sweep(clock)["rotated"] == 0
    clock.advance(seconds=1)
    assert run_sweep(clock)["rotated"] == 1
    key.refresh_from_db()
    v1.refresh_from_db()
    v2 = key.primary_version
    assert (v2.number, v2.state, v1.state) == (2, KeyState.ACTIVE, KeyState.DEACTIVATED)
    assert key.state == KeyState.ACTIVE
    assert v2.originator_until == clock.now() + 60 * DAY
    assert {v1.cka_id, v2.cka_id} <= token_ids()  # v1 still verifies what it signed
    job = Job.objects.get(key=key, kind=JobKind.ROTATE)
    assert (job.status, job.request_id) == (JobStatus.SUCCEEDED, None)
    assert ApprovalRequest.objects.count() == requests  # automatic rotation needs no approval
    assert KeyTransition.objects.get(version=v2, to_state=KeyState.ACTIVE).reason == "scheduled rotation"
    assert usage_denial(key, v1, "sign", clock.now()) == "only the primary version of key k may sign"
    assert usage_denial(key, v1, "verify", clock.now()) is None
    # The next rotation is due 30 days after v2's activation, not sooner.
    assert run_sweep(clock)["rotated"] == 0
    clock.advance(days=30)
    assert run_sweep(clock)["rotated"] == 1
    assert key.versions.count() == 3


def test_without_a_rotation_period_the_sweep_rotates_a_week_before_the_originator_period_ends(
    cast: Any, clock: Any
) -> None:
    make_policy("rotating", auto_rotate=True, originator_period_days=60)
    key = generate_key(cast.alice, cast.approvers, clock, policy="rotating")
    clock.advance(days=53, seconds=-1)
    assert run_sweep(clock)["rotated"] == 0
    clock.advance(seconds=1)
    assert run_sweep(clock) == {"activated": 0, "rotated": 1, "deactivated": 0, "destructions_started": 0}
    key.refresh_from_db()
    assert key.primary_version.number == 2


def test_the_sweep_does_not_rotate_when_the_policy_does_not_ask_for_it(cast: Any, clock: Any) -> None:
    make_policy("manual", originator_period_days=60)
    key = generate_key(cast.alice, cast.approvers, clock, policy="manual")
    clock.advance(days=59)
    assert run_sweep(clock)["rotated"] == 0
    clock.advance(days=1)
    assert run_sweep(clock) == {"activated": 0, "rotated": 0, "deactivated": 1, "destructions_started": 0}
    key.refresh_from_db()
    assert (key.state, key.versions.count()) == (KeyState.DEACTIVATED, 1)


def test_the_sweep_leaves_suspended_and_scheduled_keys_unrotated(cast: Any, clock: Any) -> None:
    make_policy("rotating", auto_rotate=True, rotation_period_days=30, originator_period_days=60)
    suspended = generate_key(cast.alice, cast.approvers, clock, policy="rotating", name="suspended")
    scheduled = generate_key(cast.alice, cast.approvers, clock, policy="rotating", name="scheduled")
    run_operation("suspend", suspended, cast.alice, cast.approvers, clock)
    run_operation("schedule_destruction", scheduled, cast.alice, cast.approvers, clock)
    clock.advance(days=31)
    assert run_sweep(clock)["rotated"] == 0
    assert suspended.versions.count() == scheduled.versions.count() == 1


def test_a_manual_rotation_keeps_the_old_version_for_processing(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock)
    v1 = key.primary_version
    req = run_operation("rotate", key, cast.alice, cast.approvers, clock)
    assert req.state == RequestState.EXECUTED
    key.refresh_from_db()
    v1.refresh_from_db()
    assert key.primary_version.number == 2
    assert v1.state == KeyState.DEACTIVATED
    assert usage_denial(key, v1, "decrypt", clock.now()) is None
    assert usage_denial(key, v1, "encrypt", clock.now()) is not None
    assert usage_denial(key, key.primary_version, "encrypt", clock.now()) is None


def test_only_an_active_key_can_be_rotated(cast: Any, clock: Any) -> None:
    waiting = generate_key(cast.alice, cast.approvers, clock, name="waiting", activate_at=None)
    with pytest.raises(Conflict, match="pre-activation"):
        run_operation("rotate", waiting, cast.alice, cast.approvers, clock)
    assert waiting.versions.count() == 1
