"""Checks of the audit trail: the chain verifies and is signed recently; security failures are reviewed."""

from __future__ import annotations

import dataclasses
import datetime as dt

from audit import services as audit
from audit.models import AuditEvent
from lifecycle.hsm import HsmError

from ..links import audit_url
from .base import FAIL, WARN, Check, CheckResult, Context, Offender, result

# Events a reviewer must look at: failed sign-ins and second factors, refused tokens and actions.
SECURITY_FAILURES = (
    "auth.login_failed",
    "auth.account_locked",
    "otp.failed",
    "otp.enrolment_failed",
    "token.denied",
    "request.refused",
    "request.decision_refused",
    "key.use_denied",
)
REVIEW_ACTION = "audit.reviewed"
DEFAULT_REVIEW_DAYS = 7
SHOWN_EVENTS = 50


def _ago(delta: dt.timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    if hours < 1:
        return f"{max(int(delta.total_seconds() // 60), 0)} min ago"
    if hours < 48:
        return f"{hours} h ago"
    return f"{hours // 24} days ago"


def audit_chain(ctx: Context) -> CheckResult:
    offenders = []
    try:
        verified = audit.verify_chain()
    except HsmError as exc:
        return result(
            "audit_chain",
            f"The chain could not be verified: {exc.message}",
            [
                Offender(
                    "audit", "audit trail", f"the HSM that holds the signing key could not be reached: {exc.message}"
                )
            ],
        )
    if not verified.ok:
        offenders.append(
            Offender(
                "audit_event",
                f"event #{verified.first_bad_seq}",
                f"the chain breaks here: {verified.reason}",
                audit_url(),
            )
        )
        for problem in verified.problems[1:20]:
            offenders.append(Offender("audit", "audit trail", problem, audit_url()))
    max_hours = ctx.setting("KMS_CHECKPOINT_MAX_AGE_HOURS", 24)
    max_age = dt.timedelta(hours=max_hours)
    checkpoint = audit.latest_checkpoint()
    head_seq = verified.head_seq
    if checkpoint is None:
        if head_seq:
            offenders.append(Offender("audit", "audit trail", "no signed checkpoint exists yet", audit_url()))
        signed = "no signed checkpoint yet"
    else:
        age = ctx.now - checkpoint.signed_at
        signed = f"last checkpoint at #{checkpoint.seq} signed {_ago(age)} (limit {max_hours} h)"
        # An idle trail needs no new checkpoint: only events left unsigned for too long count.
        if checkpoint.seq < head_seq and age > max_age:
            reason = (
                f"events #{checkpoint.seq + 1}-#{head_seq} wait for a checkpoint; the last one was signed "
                f"{_ago(age)} (limit {max_hours} h)"
            )
            offenders.append(Offender("audit", "audit trail", reason, audit_url("audit.checkpoint_signed")))
    state = "verifies" if verified.ok else f"is broken at #{verified.first_bad_seq}"
    events = f"{verified.checked} event{'s' if verified.checked != 1 else ''}"
    checkpoints = f"{verified.checkpoints_checked} checkpoint{'s' if verified.checkpoints_checked != 1 else ''}"
    verify = "verifies" if verified.checkpoints_checked == 1 else "verify"
    figure = f"The chain of {events} {state}; {checkpoints} {verify}; {signed}"
    return result("audit_chain", figure, offenders, notes=[f"chain head #{verified.head_seq} {verified.head}"])


def audit_review(ctx: Context) -> CheckResult:
    period = dt.timedelta(days=ctx.setting("KMS_COMPLIANCE_AUDIT_REVIEW_DAYS", DEFAULT_REVIEW_DAYS))
    last = AuditEvent.objects.filter(action=REVIEW_ACTION).order_by("-seq").only("seq", "at", "actor").first()
    after = last.seq if last else 0
    pending = AuditEvent.objects.filter(action__in=SECURITY_FAILURES, seq__gt=after).order_by("seq")
    count = pending.count()
    shown = list(pending.only("seq", "at", "action", "actor", "details")[:SHOWN_EVENTS])
    offenders = []
    for event in shown:
        who = (event.details or {}).get("username") or event.actor
        reason = f"{event.action} on {event.at:%Y-%m-%d %H:%M} UTC, not reviewed yet"
        severity = FAIL if ctx.now - event.at > period else WARN
        offenders.append(
            Offender("audit_event", f"#{event.seq} {who}", reason, audit_url(event.action), severity=severity)
        )
    if last is None:
        offenders.append(
            Offender("audit", "audit trail", "no audit review has been recorded yet", audit_url(), severity=WARN)
        )
        since = "no review recorded yet"
    else:
        since = f"last review by {last.actor} on {last.at:%Y-%m-%d}"
        if ctx.now - last.at > period:
            reason = f"the last review is older than the review period of {period.days} days"
            offenders.append(Offender("audit", "audit trail", reason, audit_url(REVIEW_ACTION), severity=WARN))
    hidden = count - len(shown)
    notes = [f"{hidden} more unreviewed events are not listed"] if hidden > 0 else []
    figure = (
        f"{count} failed sign-in, second-factor or refused-action event{'s' if count != 1 else ''} since the last "
        f"review ({since}; review period {period.days} days)"
    )
    checked = result("audit_review", figure, offenders, notes=notes)
    # The events beyond the list are newer than those shown (oldest first), so the verdict stands; count them.
    return dataclasses.replace(checked, offender_count=checked.offender_count + max(hidden, 0))


CHECKS = (
    Check(
        "audit_chain",
        "The audit trail is intact and signed",
        "Every audit event is re-hashed from the first to the last: sequence numbers run without a gap, each "
        "event links to the one before, and its content still matches its hash; every checkpoint's signature "
        "verifies with the audit signing key read from the HSM and matches the event it signed. Events may not "
        "stay unsigned longer than the checkpoint age limit (KMS_CHECKPOINT_MAX_AGE_HOURS).",
        audit_chain,
        uses_hsm=True,
    ),
    Check(
        "audit_review",
        "Security failures reviewed",
        "Failed sign-ins, account lock-outs, second-factor failures, refused tokens and refused actions recorded "
        "since the last audit review (an auditor's 'review done' action) are listed. Any older than the review "
        "period (KMS_COMPLIANCE_AUDIT_REVIEW_DAYS, 7 by default) fail; newer ones, or a review older than the "
        "period, are a warning.",
        audit_review,
    ),
)
