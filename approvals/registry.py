"""The registry of operations the dual-control engine can run.

`lifecycle` registers its operations at start-up (LifecycleConfig.ready); the engine looks them up
by name and never imports their code. An action says who may request it, how to validate and
canonicalise its parameters (and which quorum rule applies), and how to execute it once approved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kms_console.lib.errors import ApplicationError


@dataclass(frozen=True)
class QuorumRule:
    approvals: int
    approver_roles: tuple[str, ...]
    approve_within_hours: int
    execute_within_hours: int
    policy_ref: str = ""


@dataclass(frozen=True)
class Prepared:
    """What an action makes of a new request: its target, canonical parameters and quorum rule."""

    target_type: str
    target_id: str
    target_label: str
    parameters: dict[str, Any]
    quorum: QuorumRule


@dataclass(frozen=True)
class Outcome:
    """What `execute` did: finished (result recorded), or started asynchronous work (a job)."""

    result: dict[str, Any] = field(default_factory=dict)
    pending: bool = False


@dataclass(frozen=True)
class Action:
    operation: str
    title: str
    requester_roles: frozenset[str]
    # prepare(requester, target_id, parameters) -> Prepared; raises ApplicationError on bad input.
    prepare: Callable[[Any, str, dict[str, Any]], Prepared]
    # execute(request) -> Outcome; runs inside the approving transaction (a savepoint).
    execute: Callable[[Any], Outcome]
    # describe(request) -> one or two sentences of what will happen, for approvers.
    describe: Callable[[Any], str]
    # after_executed(request): follow-ups such as opening a mandatory review.
    after_executed: Callable[[Any], None] | None = None
    # progress(request) -> Progress or None: what an approved request whose step is still under way
    # is waiting for, when that is not just the worker (a restore waits for custodians' shares).
    progress: Callable[[Any], Progress | None] | None = None


@dataclass(frozen=True)
class Progress:
    """What an approved request is waiting for, in plain words, and where to act on it."""

    title: str
    text: str
    url: str = ""
    link_text: str = ""


_actions: dict[str, Action] = {}


def register(action: Action) -> None:
    if action.operation in _actions and _actions[action.operation] is not action:
        raise RuntimeError(f"operation {action.operation!r} is registered twice")
    _actions[action.operation] = action


def get(operation: str) -> Action:
    try:
        return _actions[operation]
    except KeyError:
        raise ApplicationError(f"unknown operation {operation!r}", code="unknown_operation") from None


def operations() -> list[str]:
    return sorted(_actions)
