"""Reads of the lifecycle that need more than a `.filter()`: the key's timeline.

The console's key page and the REST API show, for every state a key (or one of its versions) went
through, who moved it there, why, through which approval request and with whose approvals. They call
`key_timeline` and nothing else, so the answer is the same everywhere.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db.models import Prefetch

from approvals.models import ApprovalRequest, Decision

from .models import Job, Key, KeyTransition


@dataclass(frozen=True)
class DecisionEntry:
    """One approver's decision on the request behind a transition."""

    approver: str  # username
    decision: str  # "approve" | "reject"
    decided_at: dt.datetime
    comment: str = ""


@dataclass(frozen=True)
class TimelineEntry:
    """One state change of a key (version is None) or of one of its versions.

    `from_state` is None for the transition that brings the key or version into being (NIST
    transition 1); `actor` is "system" for changes made by a worker or the beat sweep; `request`
    is the approval request that led to the change (None for scheduled ones) and `decisions` are
    that request's decisions in the order they were made.
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


def key_timeline(key: Key | Any) -> list[TimelineEntry]:
    """Every transition of the key and its versions, oldest first.

    Runs exactly two queries whatever the length of the history: the transitions joined with their
    version, request (and its requester) and job, then the decisions of those requests with their
    approvers. `key` may be a Key or its primary key.
    """
    key_id = key.pk if isinstance(key, Key) else key
    transitions = (
        KeyTransition.objects.filter(key_id=key_id)
        .select_related("version", "request", "request__requester", "job")
        .prefetch_related(
            Prefetch(
                "request__decisions",
                queryset=Decision.objects.select_related("approver").order_by("decided_at", "id"),
            )
        )
        .order_by("at", "id")
    )
    return [
        TimelineEntry(
            id=transition.pk,
            at=transition.at,
            version=transition.version.number if transition.version_id else None,
            from_state=transition.from_state or None,
            to_state=transition.to_state,
            nist_transition=transition.nist_transition,
            actor=transition.actor_name,
            reason=transition.reason,
            request=transition.request,
            decisions=_decisions_of(transition.request),
            job=transition.job,
        )
        for transition in transitions
    ]
