"""Fixtures of the lifecycle tests: the whole cast in one namespace."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest


@pytest.fixture
def cast(alice: Any, bob: Any, carol: Any, dave: Any, olivia: Any, erin: Any, mallory: Any) -> SimpleNamespace:
    """alice requests; bob, carol and dave approve (in that order); the others watch."""
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
