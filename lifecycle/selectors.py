"""Reads of the lifecycle that need more than a `.filter()`: the key's timeline.

The console's key page and the REST API show, for every state a key (or one of its versions) went
through, who moved it there, why, through which approval request and with whose approvals; and the
dual-controlled steps that change no state (destruction scheduled or cancelled, rotation started,
grants, processing exceptions, backups and exports), and the outcome of the mandatory reviews of
immediate suspensions and compromises. They call `key_timeline` and nothing else, so the answer is
the same everywhere.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Prefetch, Q

from approvals.models import ApprovalRequest, Decision, RequestState
from audit.models import AuditEvent

from .models import Job, Key, KeyTransition

# Kinds of timeline entries.
TRANSITION = "transition"  # a state change of the key or of a version (a KeyTransition row)
STEP = "step"  # a dual-controlled step that changes no state (an audit event of the key)
REVIEW = "review"  # the decided mandatory review of an immediate suspend or compromise

# Audit events of a key that the timeline shows as steps. Each names its request in
# details["request"], except `key.rotation_started`, which is linked through the new version.
STEP_ACTIONS = (
    "key.destruction_scheduled",
    "key.destruction_cancelled",
    "key.rotation_started",
    "key.grant_changed",
    "key.process_exception_granted",
    "key.revocation_notice",
    "backup.created",
    "key.exported",
)
# Under a frozen clock (and within one transaction) a step and the transitions it causes share
# their time. These steps come after the transitions of that instant (the revocation notice
# follows the compromise); every other step comes before (a rotation starts, then the new version
# appears).
_STEPS_AFTER_TRANSITIONS = frozenset({"key.revocation_notice", "backup.created", "key.exported"})
# The immediate steps that are reviewed after the fact, as a noun ("the immediate suspension").
IMMEDIATE_NAMES = {"suspend": "suspension", "compromise": "marking as compromised"}
# What a decided review says about the immediate action it reviewed.
REVIEW_OUTCOMES = {
    RequestState.EXECUTED: "confirmed",
    RequestState.REJECTED: "disputed",
    RequestState.EXPIRED: "expired",
    RequestState.CANCELLED: "cancelled",
    RequestState.FAILED: "failed",
}


@dataclass(frozen=True)
class DecisionEntry:
    """One approver's decision on the request behind a transition."""

    approver: str  # username
    decision: str  # "approve" | "reject"
    decided_at: dt.datetime
    comment: str = ""


@dataclass(frozen=True)
class TimelineEntry:
    """One entry of a key's history: a state change, a dual-controlled step, or a review's outcome.

    `kind` says which:
    - "transition": a state change of the key (version is None) or of one of its versions.
      `from_state` is None for the transition that brings the key or version into being (NIST
      transition 1); `id` is the transition's primary key.
    - "step": a dual-controlled step that changes no state (`action` is its audit action, e.g.
      "key.destruction_scheduled"; `details` holds its facts, e.g. "destroy_after"). `from_state`
      is None and `to_state` is "" (no state changed); `version` names the version the step
      concerns (rotation started, backup, export) and is None for key-wide steps; `id` is the
      audit event's sequence number.
    - "review": the outcome of the mandatory review of an immediate suspend or compromise (listed
      once decided; a pending review is an open request); `actor` is the last reviewer; `outcome` is "confirmed" (approved), "disputed" (rejected, the reviewers' comments are in
      `decisions`), "expired", "cancelled" or "failed"; `request` is the review request and
      `reviewed` the request it reviewed; `id` is 0 (the review request's id is `request.pk`).
    `actor` is "system" for changes made by a worker or the beat sweep; `request` is the approval
    request behind the entry (None for scheduled changes) and `decisions` are that request's
    decisions in the order they were made. `summary` is one sentence saying what happened.
    """

    id: int
    at: dt.datetime
    version: int | None
    from_state: str | None
    to_state: str
    nist_transition: int | None
    actor: str
    reason: str
    request: ApprovalRequest | None
    decisions: tuple[DecisionEntry, ...]
    job: Job | None
    kind: str = TRANSITION
    action: str = ""
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    outcome: str = ""
    reviewed: ApprovalRequest | None = None


def _decisions_of(request: ApprovalRequest | None) -> tuple[DecisionEntry, ...]:
    if request is None:
        return ()
    # `request.decisions.all()` reads the prefetch cache filled by key_timeline: no query here.
    return tuple(
        DecisionEntry(
            approver=decision.approver.get_username(),
            decision=decision.decision,
            decided_at=decision.decided_at,
            comment=decision.comment,
        )
        for decision in request.decisions.all()
    )


def uuid_or_none(value: Any) -> uuid.UUID | None:
    """A request id from an audit event's details (None, or a value that is not one, gives None)."""
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _when(value: Any) -> str:
    """An ISO time from an audit event's details, as the console writes times ("2026-12-04 09:00 UTC")."""
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC)
    return f"{parsed:%Y-%m-%d %H:%M} UTC"


def step_summary(action: str, details: dict[str, Any]) -> str:
    """One sentence for a step of the timeline, from its audit event's details."""
    if action == "key.destruction_scheduled":
        days = details.get("wait_days")
        wait = f" ({days}-day waiting period)" if days else ""
        return (
            f"Destruction scheduled: the HSM objects and backups are destroyed after "
            f"{_when(details.get('destroy_after'))}{wait}. Until then nothing may use the key."
        )
    if action == "key.destruction_cancelled":
        scheduled = details.get("was_scheduled_for")
        return "Destruction cancelled" + (f" (it was due after {_when(scheduled)})." if scheduled else ".")
    if action == "key.rotation_started":
        return f"Rotation started: the HSM generates version {details.get('version')}, which then becomes primary."
    if action == "key.grant_changed":
        operations = details.get("operations") or []
        grantee = details.get("grantee", "a service account")
        if operations:
            return f"Grant changed: service account {grantee} may {', '.join(operations)}."
        return f"Grant revoked: service account {grantee} may no longer use the key."
    if action == "key.process_exception_granted":
        return f"Processing exception granted: the key may decrypt and verify until {_when(details.get('until'))}."
    if action == "key.revocation_notice":
        return "Revocation notice recorded: every use of the key stops for good."
    if action == "backup.created":
        return f"Version {details.get('version')} backed up (key check value {details.get('kcv')})."
    if action == "key.exported":
        return f"Version {details.get('version')} exported, wrapped for {details.get('recipient')}."
    return action


def review_summary(review: ApprovalRequest, reviewed: ApprovalRequest | None, outcome: str) -> str:
    """One sentence for a decided review: what it reviewed and what the reviewers said."""
    operation = (reviewed.operation if reviewed is not None else "") or review.parameters.get("reviewed_operation", "")
    what = f"the immediate {IMMEDIATE_NAMES.get(operation, operation.replace('_', ' ') or 'action')}"
    sentences = {
        "confirmed": f"The reviewers confirmed {what}.",
        "disputed": f"The reviewers disputed {what}: they rejected the review.",
        "expired": f"Nobody reviewed {what} in time: the review expired.",
        "cancelled": f"The review of {what} was cancelled.",
        "failed": f"Recording the review of {what} failed.",
    }
    return sentences.get(outcome, f"The review of {what}: {outcome}.")


def key_timeline(key: Key | Any) -> list[TimelineEntry]:
    """Every transition of the key and its versions, its dual-controlled steps and the outcome of
    its mandatory reviews, oldest first.

    Runs at most four queries whatever the length of the history:
    1. the transitions with their version and job;
    2. the key's audit events of the steps in STEP_ACTIONS;
    3. the requests behind both (and the reviews of those requests), with their requesters;
    4. the decisions of those requests, with their approvers.
    `key` may be a Key or its primary key.
    """
    key_id = key.pk if isinstance(key, Key) else key
    transitions = list(
        KeyTransition.objects.filter(key_id=key_id).select_related("version", "job").order_by("at", "id")
    )
    events = list(
        AuditEvent.objects.filter(target_type="key", target_id=str(key_id), action__in=STEP_ACTIONS)
        .only("seq", "at", "actor", "action", "details")
        .order_by("seq")
    )

    # A rotation's event names no request: the request is the one behind the new version's first
    # transition (the job that generated it).
    request_of_new_version: dict[int, uuid.UUID] = {}
    for transition in transitions:
        if transition.version_id and not transition.from_state and transition.request_id:
            request_of_new_version.setdefault(transition.version.number, transition.request_id)

    def event_request_id(event: AuditEvent) -> uuid.UUID | None:
        details = event.details or {}
        if event.action == "key.rotation_started":
            return request_of_new_version.get(details.get("version"))  # type: ignore[arg-type]
        return uuid_or_none(details.get("request"))

    request_ids = {t.request_id for t in transitions if t.request_id} | {
        rid for rid in map(event_request_id, events) if rid is not None
    }
    requests: dict[uuid.UUID, ApprovalRequest] = {}
    reviews: list[ApprovalRequest] = []
    if request_ids:
        for req in (
            ApprovalRequest.objects.filter(Q(pk__in=request_ids) | Q(review_of_id__in=request_ids))
            .select_related("requester")
            .prefetch_related(
                Prefetch(
                    "decisions",
                    queryset=Decision.objects.select_related("approver").order_by("decided_at", "id"),
                )
            )
        ):
            requests[req.pk] = req
            if req.review_of_id in request_ids and req.state in REVIEW_OUTCOMES:
                reviews.append(req)

    # (time, rank, tiebreak, entry): rank orders entries of the same instant (see _STEPS_AFTER_TRANSITIONS).
    ordered: list[tuple[dt.datetime, int, int, TimelineEntry]] = []
    for transition in transitions:
        request = requests.get(transition.request_id) if transition.request_id else None
        entry = TimelineEntry(
            id=transition.pk,
            at=transition.at,
            version=transition.version.number if transition.version_id else None,
            from_state=transition.from_state or None,
            to_state=transition.to_state,
            nist_transition=transition.nist_transition,
            actor=transition.actor_name,
            reason=transition.reason,
            request=request,
            decisions=_decisions_of(request),
            job=transition.job,
        )
        ordered.append((transition.at, 0, transition.pk, entry))
    for event in events:
        details = dict(event.details or {})
        request_id = event_request_id(event)
        request = requests.get(request_id) if request_id else None
        version = details.get("version")
        entry = TimelineEntry(
            id=event.seq,
            at=event.at,
            version=version if isinstance(version, int) else None,
            from_state=None,
            to_state="",
            nist_transition=None,
            actor=event.actor,
            reason=str(details.get("reason") or (request.justification if request is not None else "")),
            request=request,
            decisions=_decisions_of(request),
            job=None,
            kind=STEP,
            action=event.action,
            summary=step_summary(event.action, details),
            details=details,
        )
        rank = 1 if event.action in _STEPS_AFTER_TRANSITIONS else -1
        ordered.append((event.at, rank, event.seq, entry))
    for review in reviews:
        reviewed = requests.get(review.review_of_id)
        outcome = REVIEW_OUTCOMES[review.state]
        at = review.finished_at or review.state_changed_at
        decisions = _decisions_of(review)
        entry = TimelineEntry(
            id=0,
            at=at,
            version=None,
            from_state=None,
            to_state="",
            nist_transition=None,
            # The reviewers decide; an expired review has none, and the engine closed it.
            actor=decisions[-1].approver if decisions else "system",
            reason=review.justification,
            request=review,
            decisions=decisions,
            job=None,
            kind=REVIEW,
            action="review",
            summary=review_summary(review, reviewed, outcome),
            outcome=outcome,
            reviewed=reviewed,
        )
        ordered.append((at, 2, 0, entry))
    ordered.sort(key=lambda item: item[:3])
    return [entry for *_, entry in ordered]
