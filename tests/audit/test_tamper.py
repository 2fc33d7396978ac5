"""Issue 5, item 5: every kind of tampering is detected, at the right sequence number (service and CLI)."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from audit import services
from audit.models import AuditEvent
from tests.audit.tampering import CASES, Trail, build_trail

pytestmark = pytest.mark.django_db


@pytest.fixture
def trail(kms: Any) -> Trail:
    return build_trail()


def verify_command() -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("kms_audit", "verify", stdout=out)
    except SystemExit as exc:
        return int(exc.code), out.getvalue()
    return 0, out.getvalue()


def test_an_untouched_trail_verifies(trail: Trail) -> None:
    result = services.verify_chain()
    assert result.ok, result.problems
    assert (result.checked, result.head_seq) == (trail.head, trail.head)
    assert (result.checkpoints_checked, result.last_checkpoint_seq) == (2, trail.c2)
    assert result.unsigned_events == trail.head - trail.c2
    assert result.first_bad_seq is None


def test_kms_audit_verify_exits_0_with_a_one_line_summary(trail: Trail) -> None:
    code, output = verify_command()
    assert code == 0
    assert output.count("\n") == 1
    assert output.startswith(f"OK: {trail.head} events verified, head #{trail.head} ")
    assert f"2 checkpoint(s) verified, last signed checkpoint at #{trail.c2}." in output
    # Verifying is itself on record.
    event = AuditEvent.objects.order_by("-seq").first()
    assert (event.action, event.via, event.details["ok"], event.details["checked"]) == (
        "audit.verified",
        "cli",
        True,
        trail.head,
    )


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_tampering_is_detected_at_the_right_sequence_number(trail: Trail, case: str) -> None:
    expected = CASES[case](trail)
    result = services.verify_chain()
    assert not result.ok
    assert result.first_bad_seq == expected, result.problems
    code, output = verify_command()
    assert code == 1
    assert output.startswith(f"BROKEN at #{expected}: ")
    assert output.count("\n") == 1
    # The failed verification is on record too, naming the same number.
    event = AuditEvent.objects.order_by("-seq").first()
    assert (event.action, event.details["ok"], event.details["first_bad_seq"]) == ("audit.verified", False, expected)


def test_events_before_the_break_still_count_as_verified(trail: Trail) -> None:
    expected = CASES["changed details"](trail)
    result = services.verify_chain()
    assert result.checked == expected - 1
    assert result.head_seq == expected - 1
    assert result.head == AuditEvent.objects.get(seq=expected - 1).hash
    assert result.as_dict()["first_bad_seq"] == expected
    assert "edited" in result.as_dict()["reason"]


def test_an_empty_trail_verifies(db: Any) -> None:
    result = services.verify_chain(signer=object())
    assert result.ok
    assert (result.checked, result.head_seq) == (0, 0)
