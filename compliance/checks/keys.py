"""Checks over keys and their versions: cryptoperiods, rotation, protection past the period, strength, history."""

from __future__ import annotations

import datetime as dt

from django.db.models import F, Q
from django.db.models.functions import TruncDate

from lifecycle.hsm import ALGORITHMS
from lifecycle.models import Key, KeyTransition, KeyUsage, KeyVersion
from lifecycle.services.keys import periods_for
from lifecycle.states import TRANSITION_NUMBERS, KeyState
from lifecycle.sweep import ROTATE_AHEAD
from lifecycle.usage import PROCESS, PROTECT

from ..links import key_url
from .base import FAIL, WARN, Check, CheckResult, Context, Offender, result

# The sweep rotates due keys within a minute and the HSM job within minutes: a day is a fair grace.
ROTATION_GRACE = dt.timedelta(days=1)
# NIST SP 800-57 Part 1 Table 4: 112-bit strength may apply protection through 2030 only.
STRENGTH_112_UNTIL = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)


# --- Cryptoperiods --------------------------------------------------------------------------------


def cryptoperiod(ctx: Context) -> CheckResult:
    keys = list(
        Key.objects.filter(state=KeyState.ACTIVE)
        .select_related("primary_version")
        .only("id", "name", "primary_version__number", "primary_version__originator_until")
    )
    offenders = []
    for key in keys:
        version = key.primary_version
        if version is None or version.originator_until is None:
            offenders.append(Offender("key", key.name, "active without a cryptoperiod", key_url(key.pk)))
        elif version.originator_until <= ctx.now:
            offenders.append(
                Offender(
                    "key",
                    key.name,
                    f"version {version.number}'s originator-usage period ended on {version.originator_until:%Y-%m-%d}",
                    key_url(key.pk),
                )
            )
    inside = len(keys) - len(offenders)
    figure = f"{inside} of {len(keys)} active keys inside their cryptoperiod"
    return result("cryptoperiod", figure, offenders, applicable=bool(keys))


def _rotation_due(key: Key, ctx: Context) -> dt.datetime | None:
    policy = ctx.policies().get(key.policy_id)
    version = key.primary_version
    if policy is None or version is None or version.activated_at is None:
        return None
    if policy.rotation_period_days:
        return version.activated_at + dt.timedelta(days=policy.rotation_period_days)
    if policy.auto_rotate and version.originator_until is not None:
        return version.originator_until - ROTATE_AHEAD
    return None


def rotation(ctx: Context) -> CheckResult:
    keys = list(
        Key.objects.filter(state=KeyState.ACTIVE, destroy_after__isnull=True)
        .select_related("primary_version")
        .only(
            "id",
            "name",
            "policy_id",
            "primary_version__number",
            "primary_version__activated_at",
            "primary_version__originator_until",
        )
    )
    scheduled = 0
    offenders = []
    for key in keys:
        due = _rotation_due(key, ctx)
        if due is None:
            continue
        scheduled += 1
        if ctx.now <= due:
            continue
        late = ctx.now - due
        if late > ROTATION_GRACE:
            reason = f"rotation was due on {due:%Y-%m-%d} ({late.days} days overdue)"
            offenders.append(Offender("key", key.name, reason, key_url(key.pk)))
        else:
            reason = f"rotation fell due on {due:%Y-%m-%d %H:%M} UTC and has not completed yet"
            offenders.append(Offender("key", key.name, reason, key_url(key.pk), severity=WARN))
    overdue = sum(1 for o in offenders if o.severity == FAIL)
    figure = f"{overdue} of {scheduled} keys with a rotation schedule overdue"
    notes = [
        "A key has a rotation schedule when its policy sets a rotation period or automatic rotation "
        f"(then it is due {ROTATE_AHEAD.days} days before its originator-usage period ends)."
    ]
    return result("rotation", figure, offenders, applicable=bool(scheduled), notes=notes)


def originator_period(ctx: Context) -> CheckResult:
    active = list(
        KeyVersion.objects.filter(state=KeyState.ACTIVE)
        .select_related("key")
        .only("id", "number", "originator_until", "key__id", "key__name")
    )
    offenders = []
    past = 0
    for version in active:
        if version.originator_until is not None and version.originator_until <= ctx.now:
            past += 1
            offenders.append(
                Offender(
                    "version",
                    f"{version.key.name} v{version.number}",
                    f"still active after its originator-usage period ended on {version.originator_until:%Y-%m-%d}",
                    key_url(version.key_id),
                )
            )
    # Uses counted per day: a protecting use on a day after the originator period (or a processing
    # use after the recipient period) happened outside the cryptoperiod for certain.
    late_uses = (
        KeyUsage.objects.annotate(
            oup_end=TruncDate("version__originator_until"), rup_end=TruncDate("version__recipient_until")
        )
        .filter(
            Q(operation__in=sorted(PROTECT), version__originator_until__isnull=False, day__gt=F("oup_end"))
            | Q(operation__in=sorted(PROCESS), version__recipient_until__isnull=False, day__gt=F("rup_end"))
        )
        .select_related("version__key", "client")
        .order_by("day")
    )
    late_count = 0
    for usage in late_uses:
        late_count += usage.count
        version = usage.version
        period = "originator" if usage.operation in PROTECT else "recipient"
        offenders.append(
            Offender(
                "version",
                f"{version.key.name} v{version.number}",
                f"{usage.count} {usage.operation} operation(s) by {usage.client.get_username()} on {usage.day} "
                f"after its {period}-usage period",
                key_url(version.key_id),
            )
        )
    figure = (
        f"{past} of {len(active)} active versions past their originator-usage period; "
        f"{late_count} uses outside the cryptoperiod"
    )
    return result("originator_period", figure, offenders, applicable=bool(active) or late_count > 0)


# --- Strength and history -------------------------------------------------------------------------


def key_strength(ctx: Context) -> CheckResult:
    keys = list(
        Key.objects.exclude(state=KeyState.DESTROYED)
        .select_related("primary_version")
        .only(
            "id", "name", "algorithm", "usage", "state", "policy_id", "activate_at", "primary_version__originator_until"
        )
    )
    offenders = []
    at_112 = 0
    for key in keys:
        algorithm = ALGORITHMS.get(key.algorithm)
        if algorithm is None:
            offenders.append(Offender("key", key.name, f"unknown algorithm {key.algorithm}", key_url(key.pk)))
            continue
        if algorithm.security_strength < 112:
            reason = f"{key.algorithm} gives {algorithm.security_strength}-bit security, below the 112-bit minimum"
            offenders.append(Offender("key", key.name, reason, key_url(key.pk)))
        elif algorithm.security_strength < 128:
            at_112 += 1
            until = key.primary_version.originator_until if key.primary_version else None
            if until is None and key.state == KeyState.PRE_ACTIVATION and key.policy_id in ctx.policies():
                # Not active yet: its period will run from activation, at the earliest now.
                start = max(ctx.now, key.activate_at or ctx.now)
                until = start + dt.timedelta(days=periods_for(key, ctx.policies()[key.policy_id])[0])
            protecting = key.state in (KeyState.ACTIVE, KeyState.PRE_ACTIVATION, KeyState.SUSPENDED)
            if protecting and (until is None or until >= STRENGTH_112_UNTIL):
                when = f"until {until:%Y-%m-%d}" if until else "with no end date set yet"
                reason = f"{key.algorithm} (112-bit) may apply protection {when}; SP 800-57 disallows that after 2030"
                offenders.append(Offender("key", key.name, reason, key_url(key.pk), severity=WARN))
    strong = len(keys) - at_112 - sum(1 for o in offenders if o.severity == FAIL)
    figure = f"{strong} of {len(keys)} live keys at 128-bit security or more; {at_112} at 112 bits"
    return result("key_strength", figure, offenders, applicable=bool(keys))


def transitions(ctx: Context) -> CheckResult:
    total = KeyTransition.objects.count()
    bad = KeyTransition.objects.filter(
        Q(nist_transition__isnull=True) | Q(reason="") | Q(actor_name="")
    ).select_related("key", "version")
    allowed = {pair for pair in TRANSITION_NUMBERS}
    offenders = []
    for transition in bad[:500]:
        target = transition.key.name + (f" v{transition.version.number}" if transition.version_id else "")
        pair = (transition.from_state or None, transition.to_state)
        if transition.nist_transition is None and pair not in allowed:
            reason = f"{transition.from_state or '(new)'} -> {transition.to_state} is not an SP 800-57 transition"
            severity = FAIL
        else:
            reason = f"{transition.from_state or '(new)'} -> {transition.to_state} on {transition.at:%Y-%m-%d} records no reason or actor"
            severity = WARN
        offenders.append(Offender("transition", target, reason, key_url(transition.key_id), severity=severity))
    ok = total - len(offenders)
    figure = f"{ok} of {total} recorded state transitions follow SP 800-57 and name who and why"
    return result("transitions", figure, offenders, applicable=total > 0)


CHECKS = (
    Check(
        "cryptoperiod",
        "Active keys inside their cryptoperiod",
        "Every key in state active has a primary version whose originator-usage period (the time it may "
        "encrypt, sign or MAC, fixed from its policy when it was activated) has not ended.",
        cryptoperiod,
    ),
    Check(
        "rotation",
        "Keys rotated on schedule",
        "For keys whose policy sets a rotation period or automatic rotation, the primary version is "
        "younger than the rotation period. A rotation late by less than a day is a warning (the worker "
        "may still be running it); later than that fails.",
        rotation,
    ),
    Check(
        "originator_period",
        "No protection after the originator-usage period",
        "No version is still active after its originator-usage period ended (the beat sweep deactivates "
        "them within a minute), and the usage counters show no encrypt, sign or MAC operation on a day after "
        "that period, and no decrypt or verify after the recipient-usage period.",
        originator_period,
    ),
    Check(
        "key_strength",
        "Algorithms and key sizes of adequate strength",
        "Every live key uses an algorithm of at least 112-bit security strength (NIST SP 800-57 Part 1 "
        "Table 2). Keys of exactly 112 bits (RSA-2048) that may still apply protection after 2030 are a "
        "warning, since SP 800-57 Table 4 disallows that.",
        key_strength,
    ),
    Check(
        "transitions",
        "State history follows NIST SP 800-57",
        "Every recorded state change of a key or version is one of the transitions SP 800-57 Part 1 "
        "Section 7 allows, and names who made it and why.",
        transitions,
    ),
)
