"""Template filters of the compliance pages: status words and badge classes."""

from __future__ import annotations

from typing import Any

from django import template

from ..checks.base import FAIL, NOT_APPLICABLE, NOT_ASSESSED, PASS, STATUS_LABELS, WARN

register = template.Library()

BADGES = {
    PASS: "badge-ok",
    WARN: "badge-warn",
    FAIL: "badge-bad",
    NOT_APPLICABLE: "badge-neutral",
    NOT_ASSESSED: "badge-info",
}


@register.filter
def status_label(status: Any) -> str:
    return STATUS_LABELS.get(str(status), str(status))


@register.filter
def status_badge(status: Any) -> str:
    return BADGES.get(str(status), "badge-neutral")


@register.filter
def phase_label(phase: Any) -> str:
    return str(phase).replace("_", " ")


@register.filter
def get_item(mapping: Any, key: Any) -> Any:
    try:
        return mapping.get(key)
    except AttributeError:
        return None
