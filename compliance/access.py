"""Who sees what of compliance (SPEC §3, issue 8).

Auditors (compliance officers) and security officers see everything: controls, figures, the
offending objects, trends and reports. Every other role sees each framework's summary only. An
audit review ("review done") is recorded by auditors only: they are the independent reviewers.
"""

from __future__ import annotations

from typing import Any

from accounts import services as accounts
from kms_console.lib.roles import Role

DETAIL_ROLES = frozenset({Role.AUDITOR, Role.SECURITY_OFFICER})
REVIEW_ROLES = frozenset({Role.AUDITOR})


def can_view_details(user: Any) -> bool:
    return bool(accounts.roles_of(user) & DETAIL_ROLES)


def can_view_summary(user: Any) -> bool:
    return bool(accounts.roles_of(user))


def can_record_review(user: Any) -> bool:
    return bool(accounts.roles_of(user) & REVIEW_ROLES)
