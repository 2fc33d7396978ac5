"""Key states and transitions of NIST SP 800-57 Part 1 Rev. 5, Section 7 (data/controls.yaml `key_states`).

`tests/lifecycle/test_states.py` checks these against the catalog, so a change to one without the
other fails the build.
"""

from __future__ import annotations

from django.db import models


class KeyState(models.TextChoices):
    PRE_ACTIVATION = "pre_activation", "Pre-activation"
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"
    DEACTIVATED = "deactivated", "Deactivated"
    COMPROMISED = "compromised", "Compromised"
    DESTROYED = "destroyed", "Destroyed"


S = KeyState

# from -> allowed targets (controls.yaml key_states.allowed_transition_matrix)
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    S.PRE_ACTIVATION: frozenset({S.ACTIVE, S.COMPROMISED, S.DESTROYED}),
    S.ACTIVE: frozenset({S.SUSPENDED, S.DEACTIVATED, S.COMPROMISED, S.DESTROYED}),
    S.SUSPENDED: frozenset({S.ACTIVE, S.DEACTIVATED, S.COMPROMISED, S.DESTROYED}),
    S.DEACTIVATED: frozenset({S.COMPROMISED, S.DESTROYED}),
    S.COMPROMISED: frozenset({S.DESTROYED}),
    S.DESTROYED: frozenset(),
}

# The transition number of SP 800-57 Figure 3 for each (from, to), recorded with every transition.
TRANSITION_NUMBERS: dict[tuple[str | None, str], int] = {
    (None, S.PRE_ACTIVATION): 1,
    (S.PRE_ACTIVATION, S.DESTROYED): 2,
    (S.PRE_ACTIVATION, S.COMPROMISED): 3,
    (S.PRE_ACTIVATION, S.ACTIVE): 4,
    (S.ACTIVE, S.DESTROYED): 5,
    (S.ACTIVE, S.COMPROMISED): 6,
    (S.ACTIVE, S.SUSPENDED): 7,
    (S.ACTIVE, S.DEACTIVATED): 8,
    (S.SUSPENDED, S.DESTROYED): 9,
    (S.SUSPENDED, S.ACTIVE): 10,
    (S.SUSPENDED, S.COMPROMISED): 11,
    (S.SUSPENDED, S.DEACTIVATED): 12,
    (S.DEACTIVATED, S.COMPROMISED): 13,
    (S.DEACTIVATED, S.DESTROYED): 14,
    (S.COMPROMISED, S.DESTROYED): 15,
}


def can_transition(current: str, target: str) -> bool:
    return target in ALLOWED_TRANSITIONS.get(current, frozenset())


# Lifecycle operations and the key states each starts from. "rotate", "backup" and "export" keep
# the key's state; destruction is scheduled first and carried out by the worker.
OPERATION_FROM_STATES: dict[str, frozenset[str]] = {
    "activate": frozenset({S.PRE_ACTIVATION}),
    "rotate": frozenset({S.ACTIVE}),
    "suspend": frozenset({S.ACTIVE}),
    "resume": frozenset({S.SUSPENDED}),
    "deactivate": frozenset({S.ACTIVE, S.SUSPENDED}),
    "compromise": frozenset({S.PRE_ACTIVATION, S.ACTIVE, S.SUSPENDED, S.DEACTIVATED}),
    "schedule_destruction": frozenset({S.PRE_ACTIVATION, S.ACTIVE, S.SUSPENDED, S.DEACTIVATED, S.COMPROMISED}),
    "cancel_destruction": frozenset({S.PRE_ACTIVATION, S.ACTIVE, S.SUSPENDED, S.DEACTIVATED, S.COMPROMISED}),
    "backup": frozenset({S.PRE_ACTIVATION, S.ACTIVE, S.SUSPENDED, S.DEACTIVATED}),
    "restore": frozenset({S.PRE_ACTIVATION, S.ACTIVE, S.SUSPENDED, S.DEACTIVATED, S.COMPROMISED}),
    "export": frozenset({S.ACTIVE}),
}

OPERATION_TARGET_STATE: dict[str, str] = {
    "activate": S.ACTIVE,
    "suspend": S.SUSPENDED,
    "resume": S.ACTIVE,
    "deactivate": S.DEACTIVATED,
    "compromise": S.COMPROMISED,
}
