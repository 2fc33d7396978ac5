"""Activation dates: `activate_at` in the future, now, in the past, null; the sweep activates when due."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from approvals.models import RequestState
from approvals.services import open_request, retry
from kms_console.lib.errors import ApplicationError, Conflict
from lifecycle.hsm import HsmOperationError, Pkcs11Backend
from lifecycle.models import Job, JobStatus, Key, KeyTransition
from lifecycle.services import jobs
from lifecycle.states import KeyState
from lifecycle.usage import usage_denial
from tests.conftest import approve
from tests.lifecycle.helpers import (
    generate_key,
    on_commit,
    renew_acknowledgements,
    run_operation,
    run_sweep,
    token_ids,
    wait_out_destruction,
)

pytestmark = pytest.mark.django_db

DAY = dt.timedelta(days=1)


def test_a_key_without_activate_at_is_active_as_soon_as_it_is_generated(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock)
    assert key.state == KeyState.ACTIVE
    assert key.activate_at == clock.now()  # the default: now
    version = key.primary_version
    assert version.activated_at == clock.now()
    assert usage_denial(key, version, "encrypt", clock.now()) is None


def test_a_key_with_activate_at_in_the_future_waits_in_pre_activation_until_the_sweep_activates_it(
    cast: Any, clock: Any
) -> None:
    when = clock.now() + 10 * DAY
    key = generate_key(cast.alice, cast.approvers, clock, activate_at=when)
    assert key.state == KeyState.PRE_ACTIVATION
    assert key.activate_at == when
    assert usage_denial(key, key.primary_version, "encrypt", clock.now()) == "key k is not active yet (pre-activation)"

    clock.advance(days=10, seconds=-1)
    assert run_sweep(clock)["activated"] == 0
    key.refresh_from_db()
    assert key.state == KeyState.PRE_ACTIVATION

    clock.advance(seconds=1)
    assert run_sweep(clock)["activated"] == 1
    key.refresh_from_db()
    assert key.state == KeyState.ACTIVE
    change = KeyTransition.objects.filter(key=key, version__isnull=True).order_by("at", "id").last()
    assert (change.from_state, change.to_state, change.nist_transition) == (
        KeyState.PRE_ACTIVATION,
        KeyState.ACTIVE,
        4,
    )
    assert (change.actor_name, change.reason) == ("system", "activation date reached")
    assert change.request_id == key.created_by_request_id  # the generation request approved the date
    # The cryptoperiod starts at activation, not at generation.
    version = key.primary_version
    version.refresh_from_db()
    assert version.activated_at == when
    assert version.originator_until == when + dt.timedelta(days=730)
    # A second sweep finds nothing more to do.
    assert run_sweep(clock)["activated"] == 0


def test_a_key_with_activate_at_in_the_past_is_active_once_generated(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, activate_at=clock.now() - DAY)
    assert key.state == KeyState.ACTIVE


def test_a_key_with_a_null_activate_at_stays_in_pre_activation_until_an_approved_activation(
    cast: Any, clock: Any
) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, activate_at=None)
    assert key.activate_at is None
    clock.advance(days=3650)
    assert run_sweep(clock)["activated"] == 0
    key.refresh_from_db()
    assert key.state == KeyState.PRE_ACTIVATION

    renew_acknowledgements(*cast.approvers)  # ten years on, the custodians' acknowledgements lapsed
    req = run_operation("activate", key, cast.alice, cast.approvers, clock)
    assert req.required_approvals == 1
    assert req.state == RequestState.EXECUTED
    assert key.state == KeyState.ACTIVE
    assert key.primary_version.activated_at == clock.now()


def test_the_sweep_does_not_activate_a_key_waiting_for_destruction(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, activate_at=clock.now() + 40 * DAY)
    run_operation("schedule_destruction", key, cast.alice, cast.approvers, clock)
    key.refresh_from_db()
    assert key.destroy_after < key.activate_at  # destruction is due at day 30, activation at day 40
    clock.advance(days=41)
    run_sweep(clock)
    key.refresh_from_db()
    assert key.state == KeyState.DESTROYED  # destroyed from pre-activation (transition 2), never activated
    assert not KeyTransition.objects.filter(key=key, to_state=KeyState.ACTIVE).exists()


def test_a_scheduled_key_is_not_activated_while_the_destruction_waits(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, activate_at=clock.now() + 5 * DAY)
    run_operation("schedule_destruction", key, cast.alice, cast.approvers, clock)
    clock.advance(days=6)
    assert run_sweep(clock)["activated"] == 0
    key.refresh_from_db()
    assert key.state == KeyState.PRE_ACTIVATION
    wait_out_destruction(key, clock)
    assert key.state == KeyState.DESTROYED


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tomorrow", "ISO 8601"),
        ("2026-12-24T09:00:00", "time zone"),
        (12345, "ISO 8601"),
        (["2026-12-24T09:00:00Z"], "ISO 8601"),
    ],
)
def test_a_bad_activate_at_is_refused_with_a_field_error(cast: Any, clock: Any, value: Any, message: str) -> None:
    with pytest.raises(ApplicationError, match=message) as excinfo:
        open_request(
            operation="generate",
            requester=cast.alice,
            justification="bad date",
            parameters={"name": "bad", "algorithm": "AES-256", "usage": "encrypt_decrypt", "activate_at": value},
        )
    assert excinfo.value.status_code == 400
    assert "activate_at" in excinfo.value.details


@pytest.mark.parametrize("operation", ["activate", "compromise", "schedule_destruction"])
def test_nothing_is_done_to_a_key_whose_generation_has_not_run_yet(cast: Any, clock: Any, operation: str) -> None:
    # Approve the generation without letting the job run (no commit in this test's transaction).
    generation = open_request(
        operation="generate",
        requester=cast.alice,
        justification="slow worker",
        parameters={"name": "slow", "algorithm": "AES-256", "usage": "encrypt_decrypt"},
    )
    approve(generation, cast.bob, cast.carol, clock=clock)
    key = Key.objects.get(name="slow")
    job = Job.objects.get(key=key)
    assert job.status == JobStatus.QUEUED

    with pytest.raises(Conflict, match="still being generated") as excinfo:
        run_operation(operation, key, cast.alice, [cast.dave], clock)
    assert excinfo.value.code == "not_generated"

    # Once the worker made it, the key is active (activate_at defaulted to the request's time).
    with on_commit():
        jobs.run_job(job.pk)
    key.refresh_from_db()
    assert key.state == KeyState.ACTIVE
    assert [t.to_state for t in KeyTransition.objects.filter(key=key, version__isnull=True)] == [
        KeyState.PRE_ACTIVATION,
        KeyState.ACTIVE,
    ]


def test_a_key_whose_generation_failed_can_be_scheduled_for_destruction_and_a_retry_never_activates_it(
    cast: Any, clock: Any, monkeypatch: Any
) -> None:
    def refuses(self: Pkcs11Backend, *args: Any, **kwargs: Any) -> Any:
        raise HsmOperationError("token 'kms-test' refused the operation (MechanismInvalid)")

    with monkeypatch.context() as patch:
        patch.setattr(Pkcs11Backend, "generate", refuses)
        with on_commit():
            generation = open_request(
                operation="generate",
                requester=cast.alice,
                justification="j",
                parameters={"name": "broken", "algorithm": "AES-256", "usage": "encrypt_decrypt"},
            )
            approve(generation, cast.bob, cast.carol, clock=clock)
    key = Key.objects.get(name="broken")
    assert (key.state, key.primary_version_id) == (KeyState.PRE_ACTIVATION, None)

    run_operation("schedule_destruction", key, cast.alice, [cast.dave, cast.bob], clock)
    assert key.destroy_after is not None
    with on_commit():
        retry(request_id=generation.pk, actor=cast.carol)  # the token works again
    generation.refresh_from_db()
    key.refresh_from_db()
    assert generation.state == RequestState.EXECUTED
    assert (key.state, key.primary_version.number) == (KeyState.PRE_ACTIVATION, 1)  # made, not activated
    wait_out_destruction(key, clock)
    assert key.state == KeyState.DESTROYED
    assert key.primary_version.cka_id not in token_ids()
