"""Checks over keys: cryptoperiods, rotation, use past the periods, strength, state history."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.urls import reverse

from compliance.checks.base import FAIL, NOT_APPLICABLE, PASS, WARN
from lifecycle.models import KeyTransition, KeyUsage
from lifecycle.services.policies import policy_apply
from lifecycle.states import KeyState

from .helpers import labels, orm_key, run

pytestmark = pytest.mark.django_db


# --- Cryptoperiods --------------------------------------------------------------------------------


def test_cryptoperiod_passes_when_every_active_key_is_inside_its_period(clock: Any, cast: Any) -> None:
    now = clock.now()
    orm_key("payments", kms=cast.kms, owner=cast.alice, now=now)
    orm_key("tokens", kms=cast.kms, owner=cast.alice, now=now, algorithm="HMAC-SHA256", usage="mac")
    # Keys that are not active do not count either way.
    orm_key("retired", kms=cast.kms, owner=cast.alice, now=now, state=KeyState.DEACTIVATED, activated_days_ago=900)

    result = run("cryptoperiod")

    assert result.status == PASS
    assert result.figure == "2 of 2 active keys inside their cryptoperiod"
    assert result.offenders == ()


def test_cryptoperiod_fails_and_names_the_key_past_its_period(clock: Any, cast: Any) -> None:
    now = clock.now()
    orm_key("fresh", kms=cast.kms, owner=cast.alice, now=now)
    stale = orm_key("stale", kms=cast.kms, owner=cast.alice, now=now, activated_days_ago=800, originator_days=730)

    result = run("cryptoperiod")

    assert result.status == FAIL
    assert result.figure == "1 of 2 active keys inside their cryptoperiod"
    [offender] = result.offenders
    assert offender.label == "stale"
    assert "originator-usage period ended on 2026-09-25" in offender.reason
    assert offender.url == reverse("lifecycle:key_detail", args=[stale.pk])


def test_cryptoperiod_is_not_applicable_without_active_keys(clock: Any, cast: Any) -> None:
    orm_key("waiting", kms=cast.kms, owner=cast.alice, now=clock.now(), state=KeyState.PRE_ACTIVATION)
    assert run("cryptoperiod").status == NOT_APPLICABLE


# --- Rotation -------------------------------------------------------------------------------------


@pytest.fixture
def rotating(kms: Any) -> Any:
    version = policy_apply(name="rotating", settings={"auto_rotate": True, "rotation_period_days": 90}, actor=None)
    return version.policy


def test_rotation_passes_when_keys_are_younger_than_the_rotation_period(clock: Any, cast: Any, rotating: Any) -> None:
    orm_key("young", kms=cast.kms, owner=cast.alice, now=clock.now(), policy=rotating, activated_days_ago=30)
    # A policy without a rotation schedule puts no key in this check.
    orm_key("unscheduled", kms=cast.kms, owner=cast.alice, now=clock.now(), activated_days_ago=400)

    result = run("rotation")

    assert result.status == PASS
    assert result.figure == "0 of 1 keys with a rotation schedule overdue"


def test_rotation_fails_for_a_key_overdue_and_warns_for_one_just_due(clock: Any, cast: Any, rotating: Any) -> None:
    now = clock.now()
    orm_key("overdue", kms=cast.kms, owner=cast.alice, now=now, policy=rotating, activated_days_ago=100)
    orm_key("not-due", kms=cast.kms, owner=cast.alice, now=now, policy=rotating)
    # Due for two hours: the sweep may still be rotating it.
    key = orm_key("due-today", kms=cast.kms, owner=cast.alice, now=now, policy=rotating, activated_days_ago=90)
    key.primary_version.activated_at = now - dt.timedelta(days=90, hours=2)
    key.primary_version.save()

    result = run("rotation")

    assert result.status == FAIL
    assert result.figure == "1 of 3 keys with a rotation schedule overdue"
    by_label = {o.label: o for o in result.offenders}
    assert by_label["overdue"].severity == FAIL
    assert "10 days overdue" in by_label["overdue"].reason
    assert by_label["due-today"].severity == WARN
    assert "not-due" not in by_label


def test_automatic_rotation_without_a_period_falls_due_before_the_originator_period_ends(clock: Any, cast: Any) -> None:
    policy = policy_apply(name="auto", settings={"auto_rotate": True}, actor=None).policy
    orm_key(
        "late",
        kms=cast.kms,
        owner=cast.alice,
        now=clock.now(),
        policy=policy,
        originator_days=30,
        activated_days_ago=28,
    )

    result = run("rotation")

    # Due 7 days before the end of its 30-day originator period, i.e. 5 days ago.
    assert result.status == FAIL
    assert labels(result) == {"late"}


# --- Protection after the originator period -------------------------------------------------------


def test_originator_period_passes_when_nothing_protects_past_its_period(clock: Any, cast: Any) -> None:
    key = orm_key("ok", kms=cast.kms, owner=cast.alice, now=clock.now())
    KeyUsage.objects.create(
        version=key.primary_version, client=cast.svc, operation="encrypt", day=clock.now().date(), count=5
    )

    result = run("originator_period")

    assert result.status == PASS
    assert result.figure == "0 of 1 active versions past their originator-usage period; 0 uses outside the cryptoperiod"


def test_originator_period_fails_for_an_active_version_past_it_and_for_late_uses(clock: Any, cast: Any) -> None:
    now = clock.now()
    orm_key("still-active", kms=cast.kms, owner=cast.alice, now=now, activated_days_ago=31, originator_days=30)
    retired = orm_key(
        "retired",
        kms=cast.kms,
        owner=cast.alice,
        now=now,
        state=KeyState.DEACTIVATED,
        activated_days_ago=60,
        originator_days=30,
        recipient_days=40,
    )
    version = retired.primary_version
    # Encrypting the day after the originator period ended, decrypting after the recipient period.
    KeyUsage.objects.create(version=version, client=cast.svc, operation="encrypt", day=dt.date(2026, 11, 5), count=3)
    KeyUsage.objects.create(version=version, client=cast.svc, operation="decrypt", day=dt.date(2026, 11, 20), count=2)
    # On the last day of the period is still inside it.
    KeyUsage.objects.create(version=version, client=cast.svc, operation="encrypt", day=dt.date(2026, 11, 4), count=9)

    result = run("originator_period")

    assert result.status == FAIL
    assert result.figure == "1 of 1 active versions past their originator-usage period; 5 uses outside the cryptoperiod"
    reasons = sorted(o.reason for o in result.offenders)
    assert any(r.startswith("still active after its originator-usage period") for r in reasons)
    assert "3 encrypt operation(s) by svc on 2026-11-05 after its originator-usage period" in reasons
    assert "2 decrypt operation(s) by svc on 2026-11-20 after its recipient-usage period" in reasons
    assert labels(result) == {"still-active v1", "retired v1"}


# --- Strength -------------------------------------------------------------------------------------


def test_key_strength_passes_for_128_bit_keys_and_short_lived_112_bit_ones(clock: Any, cast: Any) -> None:
    now = clock.now()
    orm_key("aes", kms=cast.kms, owner=cast.alice, now=now)
    orm_key(
        "rsa", kms=cast.kms, owner=cast.alice, now=now, algorithm="RSA-2048", usage="sign_verify", originator_days=365
    )

    result = run("key_strength")

    assert result.status == PASS
    assert result.figure == "1 of 2 live keys at 128-bit security or more; 1 at 112 bits"


def test_key_strength_warns_for_112_bit_keys_protecting_past_2030_and_fails_unknown_ones(clock: Any, cast: Any) -> None:
    now = clock.now()
    orm_key(
        "long-rsa",
        kms=cast.kms,
        owner=cast.alice,
        now=now,
        algorithm="RSA-2048",
        usage="sign_verify",
        originator_days=1600,
    )
    orm_key("odd", kms=cast.kms, owner=cast.alice, now=now, algorithm="DES3", usage="encrypt_decrypt")

    result = run("key_strength")

    assert result.status == FAIL
    by_label = {o.label: o for o in result.offenders}
    assert by_label["long-rsa"].severity == WARN
    assert "disallows that after 2030" in by_label["long-rsa"].reason
    assert by_label["odd"].severity == FAIL
    assert by_label["odd"].reason == "unknown algorithm DES3"


# --- State history --------------------------------------------------------------------------------


def _transition(key: Any, from_state: str, to_state: str, number: int | None, *, reason: str = "why", at: Any) -> None:
    KeyTransition.objects.create(
        key=key,
        from_state=from_state,
        to_state=to_state,
        nist_transition=number,
        at=at,
        actor_name="alice",
        reason=reason,
    )


def test_transitions_pass_when_history_follows_sp_800_57(clock: Any, cast: Any) -> None:
    key = orm_key("k", kms=cast.kms, owner=cast.alice, now=clock.now())
    _transition(key, "", "pre_activation", 1, at=clock.now())
    _transition(key, "pre_activation", "active", 4, at=clock.now())

    result = run("transitions")

    assert result.status == PASS
    assert result.figure == "2 of 2 recorded state transitions follow SP 800-57 and name who and why"


def test_transitions_fail_for_a_forbidden_transition_and_warn_without_a_reason(clock: Any, cast: Any) -> None:
    key = orm_key("k", kms=cast.kms, owner=cast.alice, now=clock.now())
    _transition(key, "destroyed", "active", None, at=clock.now())
    _transition(key, "active", "suspended", 7, reason="", at=clock.now())

    result = run("transitions")

    assert result.status == FAIL
    reasons = {o.reason: o.severity for o in result.offenders}
    assert reasons["destroyed -> active is not an SP 800-57 transition"] == FAIL
    assert reasons["active -> suspended on 2026-12-04 records no reason or actor"] == WARN
