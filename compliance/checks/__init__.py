"""The evidence checks, in the order the dashboard lists them (see `base` for what a check is)."""

from __future__ import annotations

from kms_console.lib.errors import NotFound

from . import audit_trail, backups, dual_control, hsm, keys, people
from .base import Check

CHECKS: tuple[Check, ...] = (
    *keys.CHECKS,
    *dual_control.CHECKS,
    *people.CHECKS,
    *audit_trail.CHECKS,
    *hsm.CHECKS,
    *backups.CHECKS,
)
BY_ID: dict[str, Check] = {check.id: check for check in CHECKS}


def get_check(check_id: str) -> Check:
    try:
        return BY_ID[check_id]
    except KeyError:
        raise NotFound(f"No evidence check named {check_id!r}.") from None
