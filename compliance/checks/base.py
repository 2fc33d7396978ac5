"""The vocabulary of evidence checks: results, offending objects, and the context one assessment shares.

A check is a small function over live data: `run(ctx) -> CheckResult`. It reads the other apps
(never writes), uses a fixed number of queries however many keys there are, and asks the HSM
through `ctx.inventory(hsm)` so that one `inventory()` call per HSM serves every check of an
assessment. Results say pass / warn / fail / not_applicable, a figure a person can read ("47 of 48
active keys inside their cryptoperiod") and the offending objects with links to them.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from lifecycle.hsm import HsmError, ObjectInfo
from lifecycle.models import Hsm, Key, KeyVersion, PolicyVersion
from lifecycle.states import KeyState

logger = logging.getLogger(__name__)
T = TypeVar("T")

PASS = "pass"
WARN = "warn"
FAIL = "fail"
NOT_APPLICABLE = "not_applicable"
# A control that no check serves (control level only; a check always has one of the four above).
NOT_ASSESSED = "not_assessed"

CHECK_STATUSES = (PASS, WARN, FAIL, NOT_APPLICABLE)
CONTROL_STATUSES = (FAIL, WARN, PASS, NOT_APPLICABLE, NOT_ASSESSED)
STATUS_LABELS = {
    PASS: "Pass",
    WARN: "Warning",
    FAIL: "Fail",
    NOT_APPLICABLE: "Not applicable",
    NOT_ASSESSED: "Not assessed automatically",
}
# Worst first: a control is as bad as the worst check that serves it.
SEVERITY = {FAIL: 3, WARN: 2, PASS: 1, NOT_APPLICABLE: 0}

# How many key versions one assessment asks the HSM for a key check value. Each is an HSM call;
# a window that moves every day covers a large estate over a few days (the nightly snapshot checks all).
DEFAULT_KCV_SAMPLE = 100
# Offending objects kept per check result (the figure still counts all of them).
MAX_OFFENDERS = 200


def worst(statuses: list[str]) -> str:
    """The control status from its checks' statuses (not_applicable only when every check is)."""
    if not statuses:
        return NOT_ASSESSED
    return max(statuses, key=lambda status: SEVERITY[status])


@dataclass(frozen=True)
class Offender:
    """An object that fails (or weakens) a check, and why, with a link to it in the console."""

    kind: str  # key, version, request, user, policy, hsm, hsm_object, audit_event, backup, transition
    label: str
    reason: str
    url: str = ""
    severity: str = FAIL  # fail or warn

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "label": self.label,
            "reason": self.reason,
            "url": self.url,
            "severity": self.severity,
        }


@dataclass(frozen=True)
class CheckResult:
    check_id: str
    status: str
    figure: str
    offenders: tuple[Offender, ...] = ()
    offender_count: int = 0  # all of them, also those beyond MAX_OFFENDERS
    notes: tuple[str, ...] = ()  # further lines of evidence (what was compared, limits used)

    def as_dict(self, *, offenders: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": self.status,
            "figure": self.figure,
            "offender_count": self.offender_count,
            "notes": list(self.notes),
        }
        if offenders:
            body["offenders"] = [o.as_dict() for o in self.offenders]
        return body


def natural_key(text: str) -> tuple[tuple[int, Any], ...]:
    """Sort key that orders the ASCII digit runs of a text as numbers ("#13 bob" before "#100 ann"),
    by length then digits (no int(): any label, however long, sorts without error)."""
    return tuple(
        (0, (len(part.lstrip("0")), part.lstrip("0"))) if part[0] in "0123456789" else (1, part)
        for part in re.split(r"([0-9]+)", text)
        if part
    )


def result(
    check_id: str, figure: str, offenders: list[Offender], *, applicable: bool = True, notes: list[str] | None = None
) -> CheckResult:
    """The usual verdict: not_applicable when nothing was there to check, else the worst offender."""
    if not applicable and not offenders:
        status = NOT_APPLICABLE
    elif any(o.severity == FAIL for o in offenders):
        status = FAIL
    elif offenders:
        status = WARN
    else:
        status = PASS
    # Failures first, so a capped list still shows them; numbers in labels in numeric order (#13 before #100).
    ordered = sorted(offenders, key=lambda o: (o.severity != FAIL, o.kind, natural_key(o.label)))
    return CheckResult(
        check_id=check_id,
        status=status,
        figure=figure,
        offenders=tuple(ordered[:MAX_OFFENDERS]),
        offender_count=len(offenders),
        notes=tuple(notes or ()),
    )


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    # What is checked, in plain words for a compliance officer (shown on the control pages).
    description: str
    run: Callable[[Context], CheckResult]
    uses_hsm: bool = False


@dataclass
class HsmInventory:
    """What one HSM holds, by CKA_ID (hex); `error` says why it could not be read."""

    hsm: Hsm
    objects: dict[str, list[ObjectInfo]] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


class Context:
    """What the checks of one assessment share: the time, and data read once and reused.

    The HSM is asked once per HSM for its inventory and, for a sample of versions, for key check
    values; a check that needs the same answer again gets it from here.
    """

    def __init__(self, *, now: dt.datetime | None = None, kcv_sample: int | None = DEFAULT_KCV_SAMPLE) -> None:
        self.now = now or timezone.now()
        self.kcv_sample = kcv_sample
        self._policies: dict[Any, PolicyVersion] | None = None
        self._hsms: list[Hsm] | None = None
        self._inventories: dict[Any, HsmInventory] = {}
        self._live_versions: list[KeyVersion] | None = None
        self._kcvs: dict[str, str | HsmError] = {}
        self._keys_per_policy: dict[Any, int] | None = None
        self._cache: dict[str, Any] = {}

    def cached(self, name: str, compute: Callable[[], T]) -> T:
        """Compute a value once per assessment (for reads several checks of one module share)."""
        if name not in self._cache:
            self._cache[name] = compute()
        return self._cache[name]

    # -- database reads shared by several checks ----------------------------------------------------

    def policies(self) -> dict[Any, PolicyVersion]:
        """The current version of every policy, by policy id."""
        if self._policies is None:
            versions = PolicyVersion.objects.filter(is_current=True).select_related("policy")
            self._policies = {version.policy_id: version for version in versions}
        return self._policies

    def keys_per_policy(self) -> dict[Any, int]:
        """How many keys that are not destroyed each policy governs, by policy id."""
        if self._keys_per_policy is None:
            rows = Key.objects.exclude(state=KeyState.DESTROYED).values("policy_id").annotate(n=Count("id"))
            self._keys_per_policy = {row["policy_id"]: row["n"] for row in rows}
        return self._keys_per_policy

    def hsms(self) -> list[Hsm]:
        if self._hsms is None:
            self._hsms = list(Hsm.objects.order_by("name"))
        return self._hsms

    def live_versions(self) -> list[KeyVersion]:
        """Every version not destroyed, with its key and HSM (one query)."""
        if self._live_versions is None:
            self._live_versions = list(
                KeyVersion.objects.exclude(state=KeyState.DESTROYED)
                .select_related("key", "hsm")
                .order_by("key__name", "number")
            )
        return self._live_versions

    # -- the HSM ------------------------------------------------------------------------------------

    def inventory(self, hsm: Hsm) -> HsmInventory:
        """The HSM's objects, read with one `inventory()` call per HSM per assessment."""
        cached = self._inventories.get(hsm.pk)
        if cached is not None:
            return cached
        found = HsmInventory(hsm=hsm)
        try:
            for info in hsm.backend().inventory():
                found.objects.setdefault(info.cka_id, []).append(info)
        except HsmError as exc:
            found.objects = {}
            found.error = exc.message
        self._inventories[hsm.pk] = found
        return found

    def key_check_value(self, version: KeyVersion) -> str | HsmError:
        """The KCV the HSM computes for this version now (or the error it gave), asked once."""
        cached = self._kcvs.get(version.cka_id)
        if cached is None:
            try:
                cached = version.hsm.backend().key_check_value(version.cka_id_bytes, version.key.algorithm)
            except HsmError as exc:
                cached = exc
            self._kcvs[version.cka_id] = cached
        return cached

    def kcv_window(self, versions: list[KeyVersion]) -> list[KeyVersion]:
        """The versions whose KCV this assessment compares: all, or a window that moves daily."""
        ordered = sorted(versions, key=lambda v: v.cka_id)
        if self.kcv_sample is None or len(ordered) <= self.kcv_sample:
            return ordered
        start = (self.now.date().toordinal() * self.kcv_sample) % len(ordered)
        doubled = ordered + ordered
        return doubled[start : start + self.kcv_sample]

    # -- settings -----------------------------------------------------------------------------------

    @staticmethod
    def setting(name: str, default: Any) -> Any:
        return getattr(settings, name, default)


def run_check(check: Check, ctx: Context) -> CheckResult:
    """Run one check; an HSM that fails half-way becomes a failed check, not a broken page."""
    try:
        return check.run(ctx)
    except HsmError as exc:
        logger.warning("compliance check %s could not reach the HSM: %s", check.id, exc.message)
        return result(
            check.id, f"The check could not read the HSM: {exc.message}", [Offender("hsm", "HSM", exc.message)]
        )
