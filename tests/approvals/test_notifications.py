"""Approvers are emailed when a request waits for them and reminded before it expires; beat expires
stale requests (`approvals.tasks.expire_and_remind`)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail

from approvals.models import RequestState
from approvals.services import decide, send_reminders
from approvals.tasks import expire_and_remind
from audit.models import AuditEvent
from tests.approvals.helpers import open_generation
from tests.conftest import fresh_otp, make_user
from tests.lifecycle.helpers import on_commit

pytestmark = pytest.mark.django_db


def recipients() -> list[str]:
    return sorted(address for message in mail.outbox for address in message.to)


def test_eligible_approvers_are_emailed_when_a_request_opens(
    alice: Any, bob: Any, carol: Any, dave: Any, erin: Any, olivia: Any, svc: Any, mallory: Any, clock: Any
) -> None:
    make_user("frank", {"custodian"}, acknowledged=False)  # a custodian, so the request waits for him too
    with on_commit():
        req = open_generation(alice)
    assert recipients() == ["bob@example.test", "carol@example.test", "dave@example.test", "frank@example.test"]
    message = mail.outbox[0]
    assert message.subject == "Approval needed: Generate a key of k"
    assert "alice asks for: Generate a new AES-256 key named 'k'" in message.body
    assert f"Digest: {req.digest}" in message.body
    assert f"/requests/{req.pk}/" in message.body
    assert "Decide before: 2026-12-07 09:00 UTC" in message.body


def test_nobody_is_emailed_before_the_request_is_committed(
    alice: Any, bob: Any, clock: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        open_generation(alice)
    assert mail.outbox == []
    assert len(callbacks) == 1
    callbacks[0]()  # the transaction commits
    assert len(mail.outbox) == 1


def test_the_requester_is_not_emailed_about_their_own_request(bob: Any, carol: Any, clock: Any) -> None:
    frank = make_user("frank", {"key_admin", "custodian"})
    with on_commit():
        open_generation(frank)
    assert recipients() == ["bob@example.test", "carol@example.test"]


def test_approvers_who_have_not_decided_are_reminded_once_before_the_request_expires(
    alice: Any, bob: Any, carol: Any, dave: Any, clock: Any
) -> None:
    req = open_generation(alice)
    decide(request_id=req.pk, approver=bob, decision="approve", otp=fresh_otp(bob, clock), digest=req.digest)
    clock.advance(hours=72 - 4, seconds=-1)  # reminders go out in the last 4 hours
    assert send_reminders() == 0
    assert mail.outbox == []

    clock.advance(seconds=2)
    assert expire_and_remind() == {"expired": 0, "reminded": 1}
    assert recipients() == ["carol@example.test", "dave@example.test"]  # bob decided already
    assert all(m.subject.startswith("Reminder: Approval needed") for m in mail.outbox)
    req.refresh_from_db()
    assert req.reminded_at == clock.now()

    clock.advance(hours=1)
    assert expire_and_remind() == {"expired": 0, "reminded": 0}  # once only
    assert len(mail.outbox) == 2


def test_beat_expires_stale_requests_and_nobody_can_approve_them_afterwards(
    alice: Any, bob: Any, carol: Any, clock: Any
) -> None:
    stale = open_generation(alice, "stale")
    clock.advance(hours=1)
    fresh = open_generation(alice, "fresh")
    clock.advance(hours=71, seconds=1)

    assert expire_and_remind() == {"expired": 1, "reminded": 1}
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert (stale.state, stale.finished_at) == (RequestState.EXPIRED, clock.now())
    assert fresh.state == RequestState.PENDING
    event = AuditEvent.objects.get(action="request.expired", target_id=str(stale.pk))
    assert event.via == "beat"
    assert expire_and_remind()["expired"] == 0


def test_a_request_executed_at_once_emails_nobody_but_its_review_waits_for_custodians(
    alice: Any, bob: Any, carol: Any, clock: Any
) -> None:
    from tests.lifecycle.helpers import generate_key, run_operation

    key = generate_key(alice, [bob, carol], clock)
    mail.outbox.clear()
    run_operation("suspend", key, alice, [], clock)
    assert [m.subject for m in mail.outbox] == [
        "Approval needed: Review of an immediate action of suspend of k",
        "Approval needed: Review of an immediate action of suspend of k",
    ]
    assert recipients() == ["bob@example.test", "carol@example.test"]
