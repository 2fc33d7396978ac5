"""Reads of compliance's own tables that need more than a `.filter()`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone

from .models import Framework, SnapshotFramework

TREND_DAYS = 90


def trend_points(framework: Framework, *, days: int = TREND_DAYS) -> list[tuple[dt.date, dict[str, int]]]:
    """(day, status counts) of the framework's snapshots in the last `days` days, oldest first (one query)."""
    since = timezone.now().date() - dt.timedelta(days=days)
    rows = (
        SnapshotFramework.objects.filter(framework=framework, snapshot__day__gte=since)
        .select_related("snapshot")
        .order_by("snapshot__day")
    )
    return [(row.snapshot.day, counts_of(row)) for row in rows]


def counts_of(row: Any) -> dict[str, int]:
    return {
        "pass": row.passed,
        "warn": row.warned,
        "fail": row.failed,
        "not_applicable": row.not_applicable,
        "not_assessed": row.not_assessed,
    }
