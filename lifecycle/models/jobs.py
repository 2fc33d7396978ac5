from __future__ import annotations

import uuid

from django.db import models

from audit.locking import TrailOrderedManager


class JobKind(models.TextChoices):
    GENERATE = "generate", "Generate"
    ROTATE = "rotate", "Rotate"
    DESTROY = "destroy", "Destroy"
    BACKUP = "backup", "Backup"
    RESTORE = "restore", "Restore"
    EXPORT = "export", "Export"
    IMPORT = "import", "Import"
    VERIFY_BACKUP = "verify_backup", "Verify backup"
    ESCROW = "escrow", "Escrow ceremony"


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


ACTIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
FINAL_JOB_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED)


class Job(models.Model):
    """One execution of an HSM step by a worker; its id is the step's idempotency key.

    State transitions: queued -> running -> succeeded | failed; running -> queued (transient error,
    retried); failed -> queued (a custodian retries the request). A succeeded job never runs again.
    Error texts are written by our code and never hold PINs or key material.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=16, choices=JobKind.choices)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    key = models.ForeignKey("lifecycle.Key", on_delete=models.PROTECT, null=True, blank=True, related_name="jobs")
    version = models.ForeignKey(
        "lifecycle.KeyVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="jobs"
    )
    hsm = models.ForeignKey("lifecycle.Hsm", on_delete=models.PROTECT, null=True, blank=True, related_name="jobs")
    request = models.ForeignKey(
        "approvals.ApprovalRequest", on_delete=models.PROTECT, null=True, blank=True, related_name="jobs"
    )
    params = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The requeue sweep reads queued jobs by age; the dashboard reads failed ones.
            models.Index(fields=["status", "created_at"], name="lifecycle_job_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} job {str(self.id)[:8]} ({self.status})"
