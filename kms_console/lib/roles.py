"""The roles of SPEC §3. Roles are Django groups of these names; the set is fixed in code."""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    KEY_ADMIN = "key_admin", "Key administrator"
    CUSTODIAN = "custodian", "Key custodian"
    SECURITY_OFFICER = "security_officer", "Security officer"
    AUDITOR = "auditor", "Auditor (compliance officer)"
    API_CLIENT = "api_client", "API client (service account)"


ALL_ROLES = frozenset(Role.values)
# Roles that act on keys or approvals: they need a confirmed TOTP device before using the console.
PRIVILEGED_ROLES = frozenset({Role.KEY_ADMIN, Role.CUSTODIAN, Role.SECURITY_OFFICER})
# The roles a quorum rule may name. Key administrators request and never approve (SPEC §3);
# auditors and service accounts never approve either.
APPROVER_ROLES = frozenset({Role.CUSTODIAN, Role.SECURITY_OFFICER})


def validate_role_set(roles: set[str] | frozenset[str]) -> str | None:
    """Return why this combination of roles is not allowed, or None when it is."""
    unknown = set(roles) - ALL_ROLES
    if unknown:
        return f"unknown role(s): {', '.join(sorted(unknown))}"
    if Role.AUDITOR in roles and len(roles) > 1:
        return "the auditor role cannot be combined with any other role (separation of duties)"
    if Role.API_CLIENT in roles and len(roles) > 1:
        return "a service account (api_client) cannot hold a human role"
    return None
