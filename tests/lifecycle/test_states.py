"""`lifecycle.states` is the NIST SP 800-57 state machine of data/controls.yaml, exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings

from lifecycle.states import ALLOWED_TRANSITIONS, TRANSITION_NUMBERS, KeyState, can_transition

CATALOG = Path(settings.BASE_DIR) / "data" / "controls.yaml"


@pytest.fixture(scope="module")
def key_states() -> dict[str, Any]:
    return yaml.safe_load(CATALOG.read_text())["key_states"]


def test_the_states_are_the_six_of_the_catalog(key_states: dict[str, Any]) -> None:
    assert {state["id"] for state in key_states["states"]} == set(KeyState.values)
    assert len(KeyState.values) == 6


def test_the_allowed_transitions_equal_the_catalog_matrix(key_states: dict[str, Any]) -> None:
    matrix = {
        source: set(targets)
        for source, targets in key_states["allowed_transition_matrix"].items()
        if source != "(generation)"
    }
    assert {source: set(targets) for source, targets in ALLOWED_TRANSITIONS.items()} == matrix
    assert key_states["allowed_transition_matrix"]["(generation)"] == [KeyState.PRE_ACTIVATION]


def test_the_transition_numbers_equal_the_catalog(key_states: dict[str, Any]) -> None:
    numbered = {(row["from"], row["to"]): row["number"] for row in key_states["transitions"]}
    assert numbered == TRANSITION_NUMBERS
    # Every numbered transition is allowed, and every allowed one has its number.
    allowed = {(source, target) for source, targets in ALLOWED_TRANSITIONS.items() for target in targets}
    assert set(TRANSITION_NUMBERS) - {(None, KeyState.PRE_ACTIVATION)} == allowed


@pytest.mark.parametrize("source", KeyState.values)
@pytest.mark.parametrize("target", KeyState.values)
def test_can_transition_answers_the_matrix(source: str, target: str, key_states: dict[str, Any]) -> None:
    expected = target in key_states["allowed_transition_matrix"][source]
    assert can_transition(source, target) is expected


def test_nothing_returns_to_pre_activation_or_leaves_destroyed_and_compromised_only_ends() -> None:
    assert not any(KeyState.PRE_ACTIVATION in targets for targets in ALLOWED_TRANSITIONS.values())
    assert ALLOWED_TRANSITIONS[KeyState.DESTROYED] == frozenset()
    assert ALLOWED_TRANSITIONS[KeyState.COMPROMISED] == frozenset({KeyState.DESTROYED})
    assert not can_transition("no-such-state", KeyState.ACTIVE)
