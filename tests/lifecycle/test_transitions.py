"""Issue 3: every allowed NIST SP 800-57 transition works and every forbidden one is refused, per key type.

Each key is generated on the real token through an approved request, brought to the starting state
through the engine, and moved on through the engine again (time frozen by `clock`).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from approvals.models import ApprovalRequest, RequestState
from approvals.services import open_request
from audit.models import AuditEvent
from kms_console.lib.errors import Conflict
from lifecycle.models import KeyTransition
from lifecycle.services import keys
from lifecycle.states import ALLOWED_TRANSITIONS, OPERATION_FROM_STATES, TRANSITION_NUMBERS, KeyState
from tests.lifecycle.helpers import (
    ASYMMETRIC,
    KEY_TYPE_IDS,
    KEY_TYPES,
    bring_to,
    destroy_now,
    generate_key,
    run_operation,
    token_ids,
    token_objects,
)

pytestmark = pytest.mark.django_db

S = KeyState
ALLOWED = sorted((number, source, target) for (source, target), number in TRANSITION_NUMBERS.items() if source)
OPERATIONS = [
    "activate",
    "rotate",
    "suspend",
    "resume",
    "deactivate",
    "compromise",
    "schedule_destruction",
    "cancel_destruction",
]
# The operation that makes each transition (destruction is scheduled, then run by the sweep).
OPERATION_TO = {
    (S.PRE_ACTIVATION, S.ACTIVE): "activate",
    (S.SUSPENDED, S.ACTIVE): "resume",
}
OPERATION_INTO = {S.SUSPENDED: "suspend", S.DEACTIVATED: "deactivate", S.COMPROMISED: "compromise"}
# What the key's versions look like after the key entered a state (pre-activation: the primary
# only; suspend and resume act on the key, its versions stay active).
VERSION_STATE_AFTER = {
    S.ACTIVE: S.ACTIVE,
    S.SUSPENDED: S.ACTIVE,
    S.DEACTIVATED: S.DEACTIVATED,
    S.COMPROMISED: S.COMPROMISED,
    S.DESTROYED: S.DESTROYED,
}


def key_type_params() -> Any:
    return pytest.mark.parametrize(("algorithm", "usage"), KEY_TYPES, ids=KEY_TYPE_IDS)


@key_type_params()
def test_generation_makes_a_pre_activation_key_on_the_token(cast: Any, clock: Any, algorithm: str, usage: str) -> None:
    """Transition 1: the key and version 1 come into being; the HSM object (pair) exists under its CKA_ID."""
    key = generate_key(cast.alice, cast.approvers, clock, algorithm=algorithm, usage=usage, activate_at=None)

    assert key.state == S.PRE_ACTIVATION
    version = key.primary_version
    assert (version.number, version.state) == (1, S.PRE_ACTIVATION)
    assert version.generated_at == clock.now()
    assert version.kcv
    first = KeyTransition.objects.filter(key=key).order_by("at", "id").first()
    assert (first.from_state, first.to_state, first.nist_transition) == ("", S.PRE_ACTIVATION, 1)
    assert first.request_id == key.created_by_request_id
    if algorithm in ASYMMETRIC:
        assert version.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")
        assert token_objects(version.cka_id) == ["private_key", "public_key"]
    else:
        assert version.public_key_pem == ""
        assert token_objects(version.cka_id) == ["secret_key"]


@key_type_params()
@pytest.mark.parametrize(("number", "source", "target"), ALLOWED, ids=[f"t{n}-{s}-to-{t}" for n, s, t in ALLOWED])
def test_every_allowed_transition_works(
    cast: Any, clock: Any, algorithm: str, usage: str, number: int, source: str, target: str
) -> None:
    key = bring_to(source, cast, clock, algorithm=algorithm, usage=usage)
    cka_ids = list(key.versions.values_list("cka_id", flat=True))

    if target == S.DESTROYED:
        req = destroy_now(key, cast.alice, cast.approvers, clock)
    else:
        operation = OPERATION_TO.get((source, target)) or OPERATION_INTO[target]
        req = run_operation(
            operation, key, cast.alice, cast.approvers, clock, justification=f"test of transition {number}"
        )

    assert req.state == RequestState.EXECUTED, req.error
    assert key.state == target
    change = KeyTransition.objects.filter(key=key, version__isnull=True).order_by("at", "id").last()
    assert (change.from_state, change.to_state, change.nist_transition) == (source, target, number)
    assert change.request_id == req.pk
    assert change.reason == req.justification
    # Who: the requester for a step executed on approval; the worker ("system") for a destruction.
    assert change.actor_name == ("system" if target == S.DESTROYED else "alice")
    assert change.at == clock.now()
    event = AuditEvent.objects.filter(action="key.state_changed", target_id=str(key.pk)).order_by("seq").last()
    assert (event.details["from"], event.details["to"], event.details["nist_transition"]) == (source, target, number)
    assert event.details["request"] == str(req.pk)

    expected_version_state = VERSION_STATE_AFTER[target]
    if source == S.PRE_ACTIVATION and target == S.ACTIVE:
        expected_version_state = S.ACTIVE
    assert set(key.versions.values_list("state", flat=True)) == {expected_version_state}
    if target == S.DESTROYED:
        assert not set(cka_ids) & token_ids()
        assert key.destroyed_at == clock.now()
    else:  # both halves of a pair (or the secret key) are still on the token
        for cka_id in cka_ids:
            assert len(token_objects(cka_id)) == (2 if algorithm in ASYMMETRIC else 1)


def forbidden_operations(state: str) -> list[str]:
    """Operations the state does not allow (cancel_destruction: nothing is scheduled)."""
    return [
        op
        for op in OPERATIONS
        if op == "cancel_destruction" or state not in OPERATION_FROM_STATES[op] or state == S.DESTROYED
    ]


@key_type_params()
@pytest.mark.parametrize("state", KeyState.values)
def test_every_forbidden_operation_is_refused_and_changes_nothing(
    cast: Any, clock: Any, algorithm: str, usage: str, state: str
) -> None:
    key = bring_to(state, cast, clock, algorithm=algorithm, usage=usage)
    transitions = KeyTransition.objects.filter(key=key).count()
    requests = ApprovalRequest.objects.count()
    refused = forbidden_operations(state)
    assert refused, "every state forbids something"

    for operation in refused:
        with pytest.raises(Conflict) as excinfo:
            open_request(
                operation=operation,
                requester=cast.alice if operation not in {"suspend", "compromise"} else cast.bob,
                justification="should be refused",
                target_id=str(key.pk),
            )
        assert excinfo.value.status_code == 409
        # The message names the key's state (or that nothing is scheduled), so people know why.
        assert key.name in excinfo.value.message

    key.refresh_from_db()
    assert key.state == state
    assert KeyTransition.objects.filter(key=key).count() == transitions
    assert ApprovalRequest.objects.count() == requests


@key_type_params()
@pytest.mark.parametrize("state", KeyState.values)
def test_the_state_machine_refuses_every_transition_the_matrix_does_not_list(
    cast: Any, clock: Any, algorithm: str, usage: str, state: str
) -> None:
    key = bring_to(state, cast, clock, algorithm=algorithm, usage=usage)
    for target in sorted(set(KeyState.values) - ALLOWED_TRANSITIONS[state]):
        with pytest.raises(Conflict, match=f"{state} -> {target}"), transaction.atomic():
            keys._set_key_state(keys.lock_key(key.pk), target, actor=cast.alice, reason="forbidden")
        key.refresh_from_db()
        assert key.state == state


def test_a_service_refuses_a_transition_the_state_forbids_naming_the_current_state(cast: Any, clock: Any) -> None:
    key = bring_to(S.COMPROMISED, cast, clock, algorithm="AES-256", usage="encrypt_decrypt")
    for service in (keys.activate, keys.suspend, keys.resume, keys.deactivate, keys.compromise):
        with pytest.raises(Conflict, match="is compromised"), transaction.atomic():
            service(keys.lock_key(key.pk), actor=cast.alice, reason="no")
    key.refresh_from_db()
    assert key.state == S.COMPROMISED


def test_a_request_whose_key_changed_state_meanwhile_fails_with_a_readable_error(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, activate_at=None)
    activation = open_request(
        operation="activate", requester=cast.alice, justification="go live", target_id=str(key.pk)
    )
    run_operation("compromise", key, cast.bob, cast.approvers, clock)

    from tests.conftest import approve

    activation = approve(activation, cast.carol, clock=clock)
    assert activation.state == RequestState.FAILED
    assert "compromised" in activation.error
    key.refresh_from_db()
    assert key.state == S.COMPROMISED


def test_a_destroyed_key_refuses_every_operation_and_keeps_its_metadata(cast: Any, clock: Any) -> None:
    key = bring_to(S.DESTROYED, cast, clock, algorithm="EC-P256", usage="sign_verify")
    for operation in [*OPERATIONS, "process_exception", "grant"]:
        with pytest.raises(Conflict):
            open_request(operation=operation, requester=cast.alice, justification="no", target_id=str(key.pk))
    key.refresh_from_db()
    assert (key.name, key.algorithm, key.usage, key.state) == ("k", "EC-P256", "sign_verify", S.DESTROYED)
    assert key.versions.get().kcv
