"""The usage rule (`lifecycle.usage.usage_denial`, SPEC §4) for every state, version and period combination.

The rule is a pure function of the key's and version's fields and the time, so these tests build
unsaved Key and KeyVersion instances (real model objects, no database) and check every combination
against the SPEC's wording, then spell out the answers people read.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid

import pytest

from lifecycle.models import Key, KeyVersion
from lifecycle.states import KeyState
from lifecycle.usage import usage_denial

S = KeyState
NOW = dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
USAGE_OF = {
    "encrypt": "encrypt_decrypt",
    "decrypt": "encrypt_decrypt",
    "sign": "sign_verify",
    "verify": "sign_verify",
    "mac": "mac",
    "verify_mac": "mac",
}
PROTECT = {"encrypt", "sign", "mac"}
# Where NOW falls in the version's periods.
PERIODS = {
    "originator": (NOW + DAY, NOW + 2 * DAY),  # inside the originator-usage period
    "recipient": (NOW - DAY, NOW + DAY),  # past it, inside the recipient-usage period
    "expired": (NOW - 2 * DAY, NOW - DAY),  # past both
    "never": (None, None),  # never activated
    "edge": (NOW, NOW + DAY),  # the originator period ends exactly now: over
}


def build(
    key_state: str,
    version_state: str,
    *,
    usage: str = "encrypt_decrypt",
    primary: bool = True,
    period: str = "originator",
    scheduled: bool = False,
    exception: str = "none",
) -> tuple[Key, KeyVersion]:
    key = Key(name="k", algorithm="AES-256", usage=usage, state=key_state)
    originator_until, recipient_until = PERIODS[period]
    version = KeyVersion(
        id=uuid.uuid4(),
        key=key,
        number=1,
        state=version_state,
        originator_until=originator_until,
        recipient_until=recipient_until,
    )
    key.primary_version_id = version.pk if primary else uuid.uuid4()
    key.destroy_after = NOW + DAY if scheduled else None
    key.process_exception_until = {"none": None, "live": NOW + DAY, "over": NOW}[exception]
    return key, version


def spec_allows(
    key_state: str, version_state: str, primary: bool, period: str, operation: str, scheduled: bool, exception: str
) -> bool:
    """SPEC §4, read literally."""
    if scheduled or key_state in {S.DESTROYED, S.SUSPENDED, S.PRE_ACTIVATION} or version_state == S.DESTROYED:
        return False  # destroyed, waiting for destruction, suspended, not yet active: nothing
    if operation in PROTECT:  # only the primary version of an active key, inside its originator period
        return key_state == S.ACTIVE and primary and version_state == S.ACTIVE and period == "originator"
    if period not in {"originator", "recipient", "edge"}:  # processing: inside the recipient period
        return False
    if S.COMPROMISED in (key_state, version_state):  # only through an approved, time-boxed exception
        return exception == "live"
    return key_state in {S.ACTIVE, S.DEACTIVATED} and version_state in {S.ACTIVE, S.DEACTIVATED}


def test_every_combination_of_state_version_period_and_operation_follows_the_spec() -> None:
    wrong = []
    combinations = itertools.product(
        S.values, S.values, (True, False), PERIODS, USAGE_OF, (False, True), ("none", "live", "over")
    )
    count = 0
    for key_state, version_state, primary, period, operation, scheduled, exception in combinations:
        key, version = build(
            key_state,
            version_state,
            usage=USAGE_OF[operation],
            primary=primary,
            period=period,
            scheduled=scheduled,
            exception=exception,
        )
        denial = usage_denial(key, version, operation, NOW)
        expected = spec_allows(key_state, version_state, primary, period, operation, scheduled, exception)
        count += 1
        if (denial is None) is not expected:
            wrong.append((key_state, version_state, primary, period, operation, scheduled, exception, denial))
        if denial is not None:
            assert denial and denial[0].islower()  # a sentence people can read, never an empty string
    assert count == 6 * 6 * 2 * 5 * 6 * 2 * 3
    assert wrong == []


@pytest.mark.parametrize("operation", sorted(USAGE_OF))
@pytest.mark.parametrize("usage", ["encrypt_decrypt", "sign_verify", "mac", "wrap_unwrap"])
def test_an_operation_that_does_not_fit_the_keys_usage_is_refused(usage: str, operation: str) -> None:
    key, version = build(S.ACTIVE, S.ACTIVE, usage=usage)
    denial = usage_denial(key, version, operation, NOW)
    if USAGE_OF[operation] == usage:
        assert denial is None
    else:
        assert denial == f"key k is a {usage} key and cannot {operation.replace('_', ' ')}"


@pytest.mark.parametrize(
    ("key_state", "version_state", "options", "operation", "answer"),
    [
        (S.ACTIVE, S.ACTIVE, {}, "encrypt", None),
        (S.ACTIVE, S.ACTIVE, {}, "decrypt", None),
        (S.ACTIVE, S.DEACTIVATED, {"primary": False, "period": "recipient"}, "decrypt", None),
        (
            S.ACTIVE,
            S.DEACTIVATED,
            {"primary": False, "period": "recipient"},
            "encrypt",
            "only the primary version of key k may encrypt",
        ),
        (
            S.ACTIVE,
            S.ACTIVE,
            {"period": "recipient"},
            "encrypt",
            "version 1 of key k is past its originator-usage period",
        ),
        (S.ACTIVE, S.ACTIVE, {"period": "edge"}, "encrypt", "version 1 of key k is past its originator-usage period"),
        (
            S.DEACTIVATED,
            S.DEACTIVATED,
            {"period": "expired"},
            "decrypt",
            "version 1 of key k is past its recipient-usage period",
        ),
        (S.DEACTIVATED, S.DEACTIVATED, {}, "encrypt", "key k is deactivated and can no longer encrypt"),
        (S.SUSPENDED, S.ACTIVE, {}, "decrypt", "key k is suspended"),
        (S.PRE_ACTIVATION, S.PRE_ACTIVATION, {}, "encrypt", "key k is not active yet (pre-activation)"),
        (S.DESTROYED, S.DESTROYED, {}, "decrypt", "key k is destroyed"),
        (S.ACTIVE, S.ACTIVE, {"scheduled": True}, "decrypt", "key k is scheduled for destruction and may not be used"),
        (
            S.COMPROMISED,
            S.COMPROMISED,
            {},
            "decrypt",
            "key k is compromised; it may decrypt or verify only under an approved exception",
        ),
        (S.COMPROMISED, S.COMPROMISED, {"exception": "live"}, "decrypt", None),
        (
            S.COMPROMISED,
            S.COMPROMISED,
            {"exception": "over"},
            "decrypt",
            "key k is compromised; it may decrypt or verify only under an approved exception",
        ),
        (
            S.COMPROMISED,
            S.COMPROMISED,
            {"exception": "live"},
            "encrypt",
            "key k is compromised and can no longer encrypt",
        ),
    ],
)
def test_the_answers_people_read(
    key_state: str, version_state: str, options: dict, operation: str, answer: str | None
) -> None:
    key, version = build(key_state, version_state, **options)
    assert usage_denial(key, version, operation, NOW) == answer


def test_an_unknown_operation_or_a_missing_version_is_refused() -> None:
    key, version = build(S.ACTIVE, S.ACTIVE)
    assert usage_denial(key, version, "wrap", NOW) == "unknown operation 'wrap'"
    assert usage_denial(key, None, "decrypt", NOW) == "key k has no such version"
