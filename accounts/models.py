from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from audit.locking import TrailOrderedManager


class Acknowledgement(models.Model):
    """A custodian accepted a version of the responsibilities text (PCI DSS 3.7.8)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="acknowledgements")
    text_version = models.CharField(max_length=32)
    text_digest = models.CharField(max_length=64)
    acknowledged_at = models.DateTimeField()

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    class Meta:
        ordering = ["-acknowledged_at"]
        indexes = [models.Index(fields=["user", "-acknowledged_at"], name="accounts_ack_user_idx")]

    def __str__(self) -> str:
        return f"{self.user} acknowledged v{self.text_version}"


class ApiToken(models.Model):
    """An API token. Only its SHA-256 is stored; the token itself is shown once at creation."""

    class Scope(models.TextChoices):
        READ = "read", "Read"
        REQUEST = "request", "Open and cancel requests"
        APPROVE = "approve", "Approve or reject requests (with the user's OTP)"
        USE = "use", "Use keys (encrypt, decrypt, sign, verify, mac)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16)  # shown in lists so people can tell tokens apart
    digest = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # The token that minted this one through the API (None: the console or kms_token). Revoking a
    # token revokes every token it minted, so a leaked token cannot leave a copy of itself behind.
    parent = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="children")

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class LoginThrottle(models.Model):
    """Failed sign-ins per username; enough of them lock the account for a while."""

    username = models.CharField(max_length=150, unique=True)
    failures = models.PositiveIntegerField(default=0)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    locked_until = models.DateTimeField(null=True, blank=True)

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    def __str__(self) -> str:
        return f"{self.username}: {self.failures} failures"
