"""Key policy settings: the defaults SPEC §5 ships as policy `standard`, validation, quorum lookup."""

from __future__ import annotations

import re
from typing import Any

from approvals.registry import QuorumRule
from kms_console.lib.errors import ApplicationError
from kms_console.lib.roles import APPROVER_ROLES, Role

from .hsm.base import ALGORITHMS
from .models import BackupRule, PolicyVersion

STANDARD_POLICY = "standard"

# Operations a policy sets a quorum for, with the default number of approvals (SPEC §5). The last
# four are ours: granting key use to a service account, a time-boxed exception to process with a
# compromised key, the backup-KEK escrow ceremony, and importing key material.
DEFAULT_APPROVALS: dict[str, int] = {
    "generate": 2,
    "activate": 1,
    "rotate": 1,
    "suspend": 0,
    "resume": 2,
    "deactivate": 1,
    "compromise": 0,
    "backup": 2,
    "restore": 2,
    "export": 2,
    "schedule_destruction": 2,
    "cancel_destruction": 1,
    "policy_change": 2,
    "custodian_change": 2,
    "hsm_change": 2,
    "grant": 1,
    "process_exception": 2,
    "escrow": 2,
    "import": 2,
}
QUORUM_OPERATIONS = tuple(DEFAULT_APPROVALS)
# Changing who may approve, or what the rules are, can never go below one approval.
META_OPERATIONS = frozenset({"policy_change", "custodian_change", "hsm_change"})
# Steps that release, restore or end key material, or widen who may use it, need at least one
# approval under any policy (a policy change cannot make them single-handed).
MIN_ONE_APPROVAL = META_OPERATIONS | frozenset(
    {"export", "restore", "import", "escrow", "schedule_destruction", "process_exception", "grant"}
)
# Act at once when their quorum is 0, and open a mandatory review.
IMMEDIATE_OPERATIONS = frozenset({"suspend", "compromise"})
DEFAULT_APPROVE_WITHIN_HOURS = 72
DEFAULT_EXECUTE_WITHIN_HOURS = 24
MAX_APPROVALS = 10
MAX_HOURS = 24 * 30

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

POLICY_FIELDS = (
    "description",
    "algorithms",
    "originator_period_days",
    "recipient_period_days",
    "auto_rotate",
    "rotation_period_days",
    "destruction_wait_days",
    "backup",
    "exportable",
    "backup_private_keys",
    "quorum",
)


def default_rule(operation: str) -> dict[str, Any]:
    return {
        "approvals": DEFAULT_APPROVALS.get(operation, 2),
        "approver_roles": [Role.CUSTODIAN.value],
        "approve_within_hours": DEFAULT_APPROVE_WITHIN_HOURS,
        "execute_within_hours": DEFAULT_EXECUTE_WITHIN_HOURS,
    }


def standard_settings() -> dict[str, Any]:
    return {
        "description": "The default policy: NIST SP 800-57 Table 1 cryptoperiods by key type, backup allowed, "
        "no wrapped export, 30 days before destruction, two approvals for most steps (see the quorum table).",
        "algorithms": sorted(ALGORITHMS),
        "originator_period_days": None,
        "recipient_period_days": None,
        "auto_rotate": False,
        "rotation_period_days": None,
        "destruction_wait_days": 30,
        "backup": BackupRule.ALLOWED.value,
        "exportable": False,
        "backup_private_keys": False,
        "quorum": {op: default_rule(op) for op in QUORUM_OPERATIONS},
    }


class PolicyInvalid(ApplicationError):
    code = "invalid_policy"


def _field_error(field: str, message: str) -> PolicyInvalid:
    return PolicyInvalid(f"{field}: {message}", details={field: [message]})


def _int_or_none(data: dict[str, Any], field: str, *, minimum: int, maximum: int) -> int | None:
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _field_error(field, "must be a whole number of days or null")
    if not minimum <= value <= maximum:
        raise _field_error(field, f"must be between {minimum} and {maximum}")
    return value


def _clean_rule(operation: str, rule: Any) -> dict[str, Any]:
    if not isinstance(rule, dict):
        raise _field_error("quorum", f"the rule for {operation} must be an object")
    unknown = set(rule) - {"approvals", "approver_roles", "approve_within_hours", "execute_within_hours"}
    if unknown:
        raise _field_error("quorum", f"unknown field(s) in the rule for {operation}: {', '.join(sorted(unknown))}")
    merged = {**default_rule(operation), **rule}
    approvals = merged["approvals"]
    if isinstance(approvals, bool) or not isinstance(approvals, int) or not 0 <= approvals <= MAX_APPROVALS:
        raise _field_error("quorum", f"approvals for {operation} must be a number from 0 to {MAX_APPROVALS}")
    if operation in MIN_ONE_APPROVAL and approvals < 1:
        raise _field_error("quorum", f"{operation} always needs at least one approval")
    roles = merged["approver_roles"]
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
        raise _field_error("quorum", f"approver_roles for {operation} must be a non-empty list of roles")
    bad_roles = set(roles) - APPROVER_ROLES
    if bad_roles:
        raise _field_error(
            "quorum", f"{', '.join(sorted(bad_roles))} cannot approve (allowed: {', '.join(sorted(APPROVER_ROLES))})"
        )
    for hours_field in ("approve_within_hours", "execute_within_hours"):
        hours = merged[hours_field]
        if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= MAX_HOURS:
            raise _field_error("quorum", f"{hours_field} for {operation} must be between 1 and {MAX_HOURS} hours")
    return {
        "approvals": approvals,
        "approver_roles": sorted(set(roles)),
        "approve_within_hours": merged["approve_within_hours"],
        "execute_within_hours": merged["execute_within_hours"],
    }


def clean_settings(data: dict[str, Any], *, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate policy settings; fields left out keep `base` (or the standard defaults)."""
    if not isinstance(data, dict):
        raise PolicyInvalid("policy settings must be a JSON object")
    unknown = set(data) - set(POLICY_FIELDS) - {"name", "justification"}
    if unknown:
        raise PolicyInvalid(
            f"unknown field(s): {', '.join(sorted(unknown))}", details={f: ["Unknown field."] for f in unknown}
        )
    merged = {**(base or standard_settings()), **{k: v for k, v in data.items() if k in POLICY_FIELDS}}
    description = merged.get("description") or ""
    if not isinstance(description, str) or len(description) > 2000:
        raise _field_error("description", "must be text of at most 2000 characters")
    algorithms = merged.get("algorithms")
    if not isinstance(algorithms, list) or not algorithms or not all(isinstance(a, str) for a in algorithms):
        raise _field_error("algorithms", "must be a non-empty list of algorithm names")
    bad = set(algorithms) - set(ALGORITHMS)
    if bad:
        raise _field_error(
            "algorithms", f"unknown algorithm(s) {', '.join(sorted(bad))}; choose from {', '.join(sorted(ALGORITHMS))}"
        )
    originator = _int_or_none(merged, "originator_period_days", minimum=1, maximum=3650)
    recipient = _int_or_none(merged, "recipient_period_days", minimum=1, maximum=7300)
    if originator is not None and recipient is not None and recipient < originator:
        raise _field_error("recipient_period_days", "must not be shorter than the originator period")
    auto_rotate = merged.get("auto_rotate")
    if not isinstance(auto_rotate, bool):
        raise _field_error("auto_rotate", "must be true or false")
    rotation = _int_or_none(merged, "rotation_period_days", minimum=1, maximum=3650)
    if rotation is not None and originator is not None and rotation > originator:
        raise _field_error("rotation_period_days", "must not exceed the originator period (rotate before it ends)")
    wait = merged.get("destruction_wait_days")
    if isinstance(wait, bool) or not isinstance(wait, int) or not 0 <= wait <= 90:
        raise _field_error("destruction_wait_days", "must be a whole number of days from 0 to 90")
    backup = merged.get("backup")
    if backup not in BackupRule.values:
        raise _field_error("backup", "must be one of required, allowed, forbidden")
    exportable = merged.get("exportable")
    if not isinstance(exportable, bool):
        raise _field_error("exportable", "must be true or false")
    backup_private_keys = merged.get("backup_private_keys", False)
    if not isinstance(backup_private_keys, bool):
        raise _field_error("backup_private_keys", "must be true or false")
    quorum_in = merged.get("quorum") or {}
    if not isinstance(quorum_in, dict):
        raise _field_error("quorum", "must map operation names to rules")
    unknown_ops = set(quorum_in) - set(QUORUM_OPERATIONS)
    if unknown_ops:
        raise _field_error("quorum", f"unknown operation(s) {', '.join(sorted(unknown_ops))}")
    base_quorum = (base or {}).get("quorum") or {}
    quorum = {}
    for op in QUORUM_OPERATIONS:
        rule = quorum_in.get(op, base_quorum.get(op, {}))
        quorum[op] = _clean_rule(op, rule)
    return {
        "description": description,
        "algorithms": sorted(set(algorithms)),
        "originator_period_days": originator,
        "recipient_period_days": recipient,
        "auto_rotate": auto_rotate,
        "rotation_period_days": rotation,
        "destruction_wait_days": wait,
        "backup": backup,
        "exportable": exportable,
        "backup_private_keys": backup_private_keys,
        "quorum": quorum,
    }


def settings_of(version: PolicyVersion) -> dict[str, Any]:
    return {field: getattr(version, field) for field in POLICY_FIELDS}


def quorum_for(version: PolicyVersion, operation: str) -> QuorumRule:
    rule = (version.quorum or {}).get(operation) or default_rule(operation)
    return QuorumRule(
        approvals=int(rule["approvals"]),
        approver_roles=tuple(rule["approver_roles"]),
        approve_within_hours=int(rule["approve_within_hours"]),
        execute_within_hours=int(rule["execute_within_hours"]),
        policy_ref=version.ref,
    )
