"""One assessment: run the evidence checks once, then read any framework's controls off the results.

The dashboard, the reports, the API and the snapshots all go through `assess()`, so a figure is the
same wherever it is shown. An assessment records the audit chain head and the latest signed
checkpoint it was computed against (read before the checks run), which every report names.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from audit import services as audit

from .checks import BY_ID, CHECKS
from .checks.base import (
    CONTROL_STATUSES,
    DEFAULT_KCV_SAMPLE,
    NOT_ASSESSED,
    Check,
    CheckResult,
    Context,
    run_check,
    worst,
)
from .mapping import CHECK_CONTROLS, CONTROL_CHECKS, control_key
from .models import Control, Framework

NOT_ASSESSED_FIGURE = "Not assessed automatically: no evidence check of the console serves this control."


@dataclass(frozen=True)
class ChainState:
    """The audit trail as the assessment found it."""

    seq: int
    head: str
    checkpoint_seq: int | None = None
    checkpoint_head: str | None = None
    checkpoint_signed_at: dt.datetime | None = None
    checkpoint_key_id: str | None = None

    @classmethod
    def now(cls) -> ChainState:
        seq, head = audit.chain_head()
        checkpoint = audit.latest_checkpoint()
        if checkpoint is None:
            return cls(seq=seq, head=head)
        return cls(
            seq=seq,
            head=head,
            checkpoint_seq=checkpoint.seq,
            checkpoint_head=checkpoint.head_hash,
            checkpoint_signed_at=checkpoint.signed_at,
            checkpoint_key_id=checkpoint.key_id,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "audit_chain_head": {"seq": self.seq, "hash": self.head},
            "latest_checkpoint": (
                {
                    "seq": self.checkpoint_seq,
                    "head_hash": self.checkpoint_head,
                    "signed_at": self.checkpoint_signed_at.isoformat() if self.checkpoint_signed_at else None,
                    "key_id": self.checkpoint_key_id,
                }
                if self.checkpoint_seq is not None
                else None
            ),
        }


@dataclass(frozen=True)
class CheckOutcome:
    check: Check
    result: CheckResult


@dataclass(frozen=True)
class ControlResult:
    control: Control
    status: str
    outcomes: tuple[CheckOutcome, ...]

    @property
    def assessed(self) -> bool:
        return bool(self.outcomes)

    @property
    def figure(self) -> str:
        if not self.outcomes:
            return NOT_ASSESSED_FIGURE
        return "; ".join(outcome.result.figure for outcome in self.outcomes)

    @property
    def offender_count(self) -> int:
        return sum(outcome.result.offender_count for outcome in self.outcomes)


@dataclass(frozen=True)
class FrameworkResult:
    framework: Framework
    controls: tuple[ControlResult, ...]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.controls)


@dataclass
class Assessment:
    computed_at: dt.datetime
    chain: ChainState
    results: dict[str, CheckResult]

    def outcome(self, check_id: str) -> CheckOutcome | None:
        found = self.results.get(check_id)
        return CheckOutcome(BY_ID[check_id], found) if found is not None else None

    def control(self, control: Control) -> ControlResult:
        """The control's status: the worst of the checks that serve it (not assessed when none does)."""
        check_ids = CONTROL_CHECKS.get(control_key(control.framework.name, control.control_id), [])
        outcomes = tuple(o for o in (self.outcome(check_id) for check_id in check_ids) if o is not None)
        if not check_ids:
            return ControlResult(control, NOT_ASSESSED, ())
        return ControlResult(control, worst([o.result.status for o in outcomes]), outcomes)

    def framework(self, framework: Framework, controls: Iterable[Control]) -> FrameworkResult:
        rows = tuple(self.control(control) for control in controls)
        counts = {status: 0 for status in CONTROL_STATUSES}
        for row in rows:
            counts[row.status] += 1
        return FrameworkResult(framework, rows, counts)


def checks_for_framework(framework: Framework) -> list[str]:
    """The checks that serve at least one control of the framework."""
    prefix = f"{framework.name}:"
    return [check.id for check in CHECKS if any(key.startswith(prefix) for key in CHECK_CONTROLS[check.id])]


def checks_for_control(control: Control) -> list[str]:
    return list(CONTROL_CHECKS.get(control_key(control.framework.name, control.control_id), []))


def assess(
    *,
    check_ids: Iterable[str] | None = None,
    now: dt.datetime | None = None,
    kcv_sample: int | None = DEFAULT_KCV_SAMPLE,
) -> Assessment:
    """Run the checks (all, or those named) once, sharing one context (and one HSM inventory per HSM)."""
    wanted = set(check_ids) if check_ids is not None else None
    chain = ChainState.now()
    ctx = Context(now=now or timezone.now(), kcv_sample=kcv_sample)
    results = {}
    for check in CHECKS:
        if wanted is None or check.id in wanted:
            results[check.id] = run_check(check, ctx)
    return Assessment(computed_at=ctx.now, chain=chain, results=results)


def framework_controls(framework: Framework) -> list[Control]:
    return list(Control.objects.filter(framework=framework).select_related("framework").order_by("position"))
