"""The audit trail: the chain verifies and is signed recently; security failures get reviewed."""

from __future__ import annotations

from typing import Any

import pytest

from audit.db import bypass_append_only
from audit.models import AuditEvent
from audit.services import record, sign_checkpoint
from compliance import services
from compliance.checks.base import FAIL, PASS, WARN
from kms_console.lib.errors import ApplicationError, Forbidden

from .helpers import run, security_failure

pytestmark = pytest.mark.django_db


# --- The chain ------------------------------------------------------------------------------------


def test_audit_chain_passes_when_it_verifies_and_a_checkpoint_covers_it(clock: Any, cast: Any) -> None:
    record("test.event", details={"n": 1})
    checkpoint = sign_checkpoint()

    result = run("audit_chain")

    assert result.status == PASS, result.offenders
    assert result.figure.startswith(f"The chain of {checkpoint.seq} events verifies; 1 checkpoint verifies;")
    assert f"last checkpoint at #{checkpoint.seq} signed 0 min ago (limit 24 h)" in result.figure


def test_audit_chain_fails_without_any_checkpoint(clock: Any, cast: Any) -> None:
    result = run("audit_chain")
    assert result.status == FAIL
    assert [o.reason for o in result.offenders] == ["no signed checkpoint exists yet"]


def test_audit_chain_fails_and_names_the_first_tampered_event(clock: Any, cast: Any) -> None:
    sign_checkpoint()
    record("test.event", details={"n": 1})
    victim = AuditEvent.objects.order_by("seq")[2]
    with bypass_append_only():
        AuditEvent.objects.filter(seq=victim.seq).update(actor="someone-else")

    result = run("audit_chain")

    assert result.status == FAIL
    assert f"is broken at #{victim.seq}" in result.figure
    first = result.offenders[0]
    assert first.label == f"event #{victim.seq}"
    assert first.reason.startswith("the chain breaks here: the event's content does not match its hash")


def test_audit_chain_fails_when_events_wait_too_long_for_a_checkpoint(clock: Any, cast: Any) -> None:
    checkpoint = sign_checkpoint()
    clock.advance(hours=25)
    record("test.event", details={"n": 1})

    result = run("audit_chain")

    assert result.status == FAIL
    [offender] = result.offenders
    assert offender.reason == (
        f"events #{checkpoint.seq + 1}-#{checkpoint.seq + 1} wait for a checkpoint; the last one was signed 25 h ago "
        "(limit 24 h)"
    )


def test_an_idle_trail_needs_no_new_checkpoint(clock: Any, cast: Any) -> None:
    sign_checkpoint()
    clock.advance(days=3)
    assert run("audit_chain").status == PASS


# --- Review of security failures ------------------------------------------------------------------


def test_audit_review_warns_while_no_review_was_ever_recorded(clock: Any, cast: Any) -> None:
    result = run("audit_review")
    assert result.status == WARN
    assert [o.reason for o in result.offenders] == ["no audit review has been recorded yet"]


def test_audit_review_passes_after_the_auditor_reviews(clock: Any, cast: Any) -> None:
    security_failure()
    security_failure("otp.failed", "bob")
    event = services.record_audit_review(actor=cast.erin, note="two failures, both typos")

    result = run("audit_review")

    assert event.action == "audit.reviewed"
    assert event.details == {"previous_review_seq": None, "failures_reviewed": 2, "note": "two failures, both typos"}
    assert result.status == PASS
    assert result.figure == (
        "0 failed sign-in, second-factor or refused-action events since the last review "
        "(last review by erin on 2026-12-04; review period 7 days)"
    )


def test_new_failures_are_a_warning_and_failures_left_unreviewed_past_the_period_fail(clock: Any, cast: Any) -> None:
    services.record_audit_review(actor=cast.erin)
    security_failure("auth.login_failed", "mallory")

    warned = run("audit_review")
    assert warned.status == WARN
    [offender] = warned.offenders
    assert offender.label.endswith(" mallory")
    assert offender.reason == "auth.login_failed on 2026-12-04 09:00 UTC, not reviewed yet"

    clock.advance(days=8)
    security_failure("otp.failed", "bob")
    failed = run("audit_review")
    assert failed.status == FAIL
    assert failed.offender_count == 3  # two events, and a review older than the period
    assert {o.severity for o in failed.offenders if o.kind == "audit_event"} == {FAIL, WARN}

    services.record_audit_review(actor=cast.erin)
    again = run("audit_review")
    assert again.status == PASS
    assert again.figure.startswith("0 failed sign-in")


def test_only_auditors_record_a_review_and_the_note_is_bounded(clock: Any, cast: Any) -> None:
    with pytest.raises(Forbidden):
        services.record_audit_review(actor=cast.olivia)
    with pytest.raises(ApplicationError, match="longer than 1000"):
        services.record_audit_review(actor=cast.erin, note="x" * 1001)
    assert not AuditEvent.objects.filter(action="audit.reviewed").exists()


def test_offenders_with_numbers_are_listed_in_numeric_order() -> None:
    from compliance.checks.base import Offender, result

    labels = ["#100 ann", "#13 bob", "#2 cy", "scratch1²", "x" + "9" * 5000, "scratch1"]
    listed = result("audit_review", "", [Offender("audit_event", label, "not reviewed yet", "") for label in labels])
    assert [o.label for o in listed.offenders][:3] == ["#2 cy", "#13 bob", "#100 ann"]
    assert {o.label for o in listed.offenders} == set(labels)
