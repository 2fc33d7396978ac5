from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from audit.locking import TrailOrderedManager


class BackupRule(models.TextChoices):
    REQUIRED = "required", "Required"
    ALLOWED = "allowed", "Allowed"
    FORBIDDEN = "forbidden", "Forbidden"


class Policy(models.Model):
    """A named key policy. Its settings live in versions; exactly one version is current."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField()

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "policies"

    def __str__(self) -> str:
        return self.name

    @property
    def current(self) -> PolicyVersion:
        cached = getattr(self, "_current_version", None)
        if cached is None:
            cached = self.versions.get(is_current=True)
            self._current_version = cached
        return cached


class PolicyVersion(models.Model):
    """One version of a policy's settings. A change makes a new version (dual-controlled).

    `originator_period_days`/`recipient_period_days` may be empty: the NIST SP 800-57 Table 1
    default for the key type applies (`lifecycle.cryptoperiods`). `quorum` holds the complete rule
    for every operation (defaults filled in), so a request can always quote the rule it was bound to.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    policy = models.ForeignKey(Policy, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    is_current = models.BooleanField(default=False)
    description = models.TextField(blank=True)
    algorithms = models.JSONField(default=list)
    originator_period_days = models.PositiveIntegerField(null=True, blank=True)
    recipient_period_days = models.PositiveIntegerField(null=True, blank=True)
    auto_rotate = models.BooleanField(default=False)
    rotation_period_days = models.PositiveIntegerField(null=True, blank=True)
    destruction_wait_days = models.PositiveSmallIntegerField(default=30)
    backup = models.CharField(max_length=16, choices=BackupRule.choices, default=BackupRule.ALLOWED)
    exportable = models.BooleanField(default=False)
    # NIST SP 800-57 Part 1 Table 5: private signature keys are not backed up (non-repudiation)
    # unless the policy says so explicitly.
    backup_private_keys = models.BooleanField(default=False)
    quorum = models.JSONField(default=dict)
    created_at = models.DateTimeField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    request = models.ForeignKey(
        "approvals.ApprovalRequest", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    class Meta:
        ordering = ["policy__name", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["policy", "number"], name="lifecycle_policyversion_unique_number"),
            # Exactly one current version per policy; the change service flips both in one transaction.
            models.UniqueConstraint(
                fields=["policy"], condition=models.Q(is_current=True), name="lifecycle_policyversion_one_current"
            ),
            models.CheckConstraint(
                condition=models.Q(destruction_wait_days__lte=90), name="lifecycle_policy_wait_at_most_90"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.policy.name} v{self.number}"

    @property
    def ref(self) -> str:
        return f"{self.policy.name} v{self.number} ({self.pk})"
