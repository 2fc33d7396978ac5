from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from audit.locking import TrailOrderedManager


class RequestState(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    EXECUTING = "executing", "Executing"
    EXECUTED = "executed", "Executed"
    FAILED = "failed", "Failed"
    REJECTED = "rejected", "Rejected"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"


OPEN_STATES = (RequestState.PENDING,)
ACTIVE_STATES = (RequestState.PENDING, RequestState.APPROVED, RequestState.EXECUTING)
FINAL_STATES = (
    RequestState.EXECUTED,
    RequestState.REJECTED,
    RequestState.EXPIRED,
    RequestState.CANCELLED,
)


class ApprovalRequest(models.Model):
    """A sensitive operation waiting for (or past) its M-of-N approval.

    State transitions:
        pending -> approved -> executing -> executed | failed;  failed -> executing (retry)
        pending -> rejected | expired | cancelled
    The digest binds everything an approver sees (`approvals.services.request_digest`); a changed
    request is a new request. Approved requests keep the exact parameters that were executed.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    operation = models.CharField(max_length=40)
    target_type = models.CharField(max_length=32)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=200, blank=True)
    parameters = models.JSONField(default=dict)
    justification = models.TextField()
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approval_requests")
    policy_ref = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField()
    digest = models.CharField(max_length=64)
    required_approvals = models.PositiveSmallIntegerField()
    approver_roles = models.JSONField(default=list)
    approve_by = models.DateTimeField()
    execute_within_hours = models.PositiveIntegerField()
    execute_by = models.DateTimeField(null=True, blank=True)  # set when the quorum is reached
    state = models.CharField(max_length=16, choices=RequestState.choices, default=RequestState.PENDING)
    state_changed_at = models.DateTimeField()
    approved_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    execution_count = models.PositiveIntegerField(default=0)
    review_of = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="reviews")
    reminded_at = models.DateTimeField(null=True, blank=True)

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The inbox and the expiry sweep both read pending requests by deadline.
            models.Index(fields=["state", "approve_by"], name="approvals_state_deadline_idx"),
            models.Index(fields=["target_type", "target_id", "-created_at"], name="approvals_target_idx"),
        ]
        constraints = [
            # At most one open request per operation on an existing object: a second one would let
            # two quorums race for the same change.
            models.UniqueConstraint(
                fields=["operation", "target_type", "target_id"],
                condition=models.Q(state="pending") & ~models.Q(target_id=""),
                name="approvals_one_pending_per_target_operation",
            ),
            models.CheckConstraint(
                condition=models.Q(state__in=RequestState.values), name="approvals_request_state_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.operation} {self.target_label or self.target_id} ({self.state})"

    @property
    def short_id(self) -> str:
        return str(self.id)[:8]


class Decision(models.Model):
    """One person's approval or rejection of a request, confirmed with their TOTP code."""

    class Kind(models.TextChoices):
        APPROVE = "approve", "Approved"
        REJECT = "reject", "Rejected"

    request = models.ForeignKey(ApprovalRequest, on_delete=models.PROTECT, related_name="decisions")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approval_decisions")
    # A copy of the request's requester, so the database itself can refuse self-approval.
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=8, choices=Kind.choices)
    comment = models.TextField(blank=True)
    digest = models.CharField(max_length=64)
    otp_device = models.CharField(max_length=64)
    approver_roles = models.JSONField(default=list)
    decided_at = models.DateTimeField()

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    class Meta:
        ordering = ["decided_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["request", "approver"], name="approvals_one_decision_per_approver"),
            models.CheckConstraint(
                condition=~models.Q(approver=models.F("requester")), name="approvals_no_self_decision"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.approver} {self.decision} {self.request_id}"
