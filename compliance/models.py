"""The control catalog (loaded from data/controls.yaml) and the daily snapshots behind the trend charts.

Compliance owns only these tables. Everything it reports is computed from the other apps' data by
the evidence checks (`compliance.checks`); it never writes to them.
"""

from __future__ import annotations

from django.db import models


class Framework(models.Model):
    """A framework of the catalog, e.g. "PCI DSS 4.0.1". `slug` is its name in URLs and the API."""

    slug = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=64, unique=True)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position", "name"]

    def __str__(self) -> str:
        return self.name


class Control(models.Model):
    """One control of a framework as the catalog describes it (paraphrased, not the standard's text)."""

    framework = models.ForeignKey(Framework, on_delete=models.CASCADE, related_name="controls")
    control_id = models.CharField(max_length=64)  # as printed by the standard: 3.7.6, SC-12(1), 164.312(b)
    title = models.TextField()
    short_title = models.CharField(max_length=200, blank=True)
    lifecycle_phases = models.JSONField(default=list)
    summary = models.TextField()
    evidence = models.JSONField(default=list)  # what an assessor would want to see, one line each
    applicability = models.TextField(blank=True)
    source = models.CharField(max_length=200, blank=True)
    related = models.JSONField(default=list)
    position = models.PositiveIntegerField(default=0)  # order in the catalog file

    class Meta:
        ordering = ["framework__position", "position"]
        constraints = [
            models.UniqueConstraint(fields=["framework", "control_id"], name="compliance_control_unique_id"),
        ]

    def __str__(self) -> str:
        return f"{self.framework.name} {self.control_id}"

    @property
    def label(self) -> str:
        """The short name shown in lists (PCI DSS has no official short titles; the catalog gives ours)."""
        return self.short_title or self.title


class Snapshot(models.Model):
    """The state of every evidence check on one day (taken by beat at night; one per UTC day).

    `checks` maps a check id to {"status", "figure", "offenders"} (the number of offending objects).
    The chain head and checkpoint name the audit trail the snapshot was computed against.
    """

    day = models.DateField(unique=True)
    taken_at = models.DateTimeField()
    chain_seq = models.BigIntegerField()
    chain_head = models.CharField(max_length=64)
    checkpoint_seq = models.BigIntegerField(null=True, blank=True)
    checks = models.JSONField(default=dict)

    class Meta:
        ordering = ["-day"]

    def __str__(self) -> str:
        return f"compliance snapshot of {self.day}"


class SnapshotFramework(models.Model):
    """One framework's counts in a snapshot, and each control's status (control id -> status)."""

    snapshot = models.ForeignKey(Snapshot, on_delete=models.CASCADE, related_name="frameworks")
    framework = models.ForeignKey(Framework, on_delete=models.CASCADE, related_name="snapshots")
    passed = models.PositiveIntegerField(default=0)
    warned = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    not_applicable = models.PositiveIntegerField(default=0)
    not_assessed = models.PositiveIntegerField(default=0)
    controls = models.JSONField(default=dict)

    class Meta:
        ordering = ["snapshot__day", "framework__position"]
        constraints = [
            models.UniqueConstraint(fields=["snapshot", "framework"], name="compliance_snapshot_one_per_framework"),
        ]
        indexes = [
            # The trend chart reads one framework's rows by day.
            models.Index(fields=["framework", "snapshot"], name="compliance_snapfw_fw_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.framework} on {self.snapshot.day}"
