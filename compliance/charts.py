"""Server-rendered SVG charts (the CSP allows no inline style and no inline script).

Geometry is computed here and drawn by the templates with SVG attributes and CSS classes
(`static/css/compliance.css` colours them), so the charts work without JavaScript.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .checks.base import FAIL, NOT_APPLICABLE, NOT_ASSESSED, PASS, STATUS_LABELS, WARN

# Drawing order (left to right, bottom to top) and colour class of each status.
ORDER = (PASS, WARN, FAIL, NOT_APPLICABLE, NOT_ASSESSED)
CLASSES = {
    PASS: "bar-ok",
    WARN: "bar-warn",
    FAIL: "bar-bad",
    NOT_APPLICABLE: "bar-neutral",
    NOT_ASSESSED: "bar-unassessed",
}
SUMMARY_WIDTH = 600
SUMMARY_HEIGHT = 28
TREND_WIDTH = 600
TREND_HEIGHT = 160
TREND_LABELS = 18


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


def summary_bar(counts: dict[str, int]) -> list[Rect]:
    """One horizontal bar split by status, proportional to the number of controls."""
    total = sum(counts.get(status, 0) for status in ORDER)
    rects = []
    x = 0.0
    for status in ORDER:
        count = counts.get(status, 0)
        if not count or not total:
            continue
        width = SUMMARY_WIDTH * count / total
        rects.append(
            Rect(
                round(x, 2),
                0,
                round(width, 2),
                SUMMARY_HEIGHT,
                CLASSES[status],
                f"{count} {STATUS_LABELS[status].lower()}",
            )
        )
        x += width
    return rects


def trend(points: list[tuple[Any, dict[str, int]]]) -> dict[str, Any]:
    """Stacked columns across the chart's width, one per snapshot day: pass at the bottom, then warn,
    fail, not applicable and not assessed on top."""
    columns = []
    plot = TREND_HEIGHT - TREND_LABELS
    step = TREND_WIDTH / max(len(points), 1)
    for index, (day, counts) in enumerate(points):
        total = sum(counts.get(status, 0) for status in ORDER) or 1
        summary = ", ".join(f"{counts.get(s, 0)} {STATUS_LABELS[s].lower()}" for s in ORDER)
        y = float(plot)
        for status in ORDER:
            count = counts.get(status, 0)
            if not count:
                continue
            height = plot * count / total
            y -= height
            columns.append(
                Rect(
                    round(index * step + step * 0.1, 2),
                    round(y, 2),
                    round(step * 0.8, 2),
                    round(height, 2),
                    CLASSES[status],
                    f"{day}: {summary}",
                )
            )
    return {
        "rects": columns,
        "width": TREND_WIDTH,
        "height": TREND_HEIGHT,
        "label_y": TREND_HEIGHT - 4,
        "first": str(points[0][0]) if points else "",
        "last": str(points[-1][0]) if len(points) > 1 else "",
    }
