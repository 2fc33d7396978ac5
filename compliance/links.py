"""Links from compliance evidence to the console pages of the objects it names.

The other apps own those pages; a link is only given when the page exists (`reverse` finds its
name), so evidence never points at a path that answers 404.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.urls import NoReverseMatch, reverse


def _first(names: tuple[str, ...], *args: Any) -> str:
    for name in names:
        try:
            return reverse(name, args=args)
        except NoReverseMatch:
            continue
    return ""


def key_url(key_id: Any) -> str:
    return _first(("lifecycle:key_detail",), str(key_id))


def request_url(request_id: Any) -> str:
    return _first(("approvals:request_detail",), str(request_id))


def policy_url(name: str) -> str:
    return _first(("lifecycle:policy_detail",), name)


def user_url(username: str) -> str:
    """Users have no page of their own: the custodians list shows their roles, TOTP and acknowledgement."""
    return _first(("lifecycle:custodian_list",))


def hsm_url(hsm_id: Any) -> str:
    return _first(("lifecycle:hsm_list",))


def audit_url(action: str | None = None) -> str:
    """The audit trail page, filtered to one action when given."""
    base = _first(("audit:event_list",))
    if base and action:
        return f"{base}?{urlencode({'action': action})}"
    return base


def check_url(check_id: str) -> str:
    return _first(("compliance:check",), check_id)
