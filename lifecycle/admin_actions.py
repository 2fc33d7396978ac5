"""Policy, custodian-role and HSM changes as dual-control actions (registered at start-up).

The security officer's operations: each is validated, quorum-ruled (by the standard policy's rule for
it, or the changed policy's own), executed by a service and described for approvers, as the key
operations are in `lifecycle.actions`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model

from accounts import services as accounts
from approvals.models import ApprovalRequest
from approvals.registry import Action, Outcome, Prepared, register
from kms_console.lib.errors import ApplicationError, Conflict
from kms_console.lib.roles import Role

from .actions import _extra_none, invalid
from .models import Hsm, Policy, PolicyVersion
from .policies import NAME_RE, STANDARD_POLICY, clean_settings, quorum_for, settings_of
from .services.policies import hsm_register, hsm_retire, policy_apply

SECURITY_OFFICER = frozenset({Role.SECURITY_OFFICER})
# Where a registered HSM's PIN may come from: never an arbitrary variable (SECRET_KEY) or file.
PIN_ENV_RE = re.compile(r"^KMS_[A-Z0-9_]{0,56}PIN$")


def _in_pin_dirs(path: str) -> bool:
    candidate = Path(path)
    if not candidate.is_absolute() or ".." in candidate.parts or len(path) > 500:
        return False
    return any(candidate.is_relative_to(Path(base)) for base in settings.KMS_HSM_PIN_DIRS)


# --- Policy, custodian and HSM changes ------------------------------------------------------------


def _standard_quorum(operation: str):
    standard = Policy.objects.filter(name=STANDARD_POLICY).first()
    if standard is None:
        raise ApplicationError("the standard policy is missing; run manage.py kms_setup")
    return quorum_for(standard.current, operation)


def _policy_prepare(requester: Any, target_id: str, p: dict[str, Any]) -> Prepared:
    name = p.get("name") or target_id
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise invalid("name", "must be 1-64 letters, digits, dots, dashes or underscores")
    existing = Policy.objects.filter(name=name).first()
    base = settings_of(existing.current) if existing else None
    cleaned = clean_settings(p, base=base)
    quorum = quorum_for(existing.current, "policy_change") if existing else _standard_quorum("policy_change")
    if base is not None and cleaned == clean_settings({}, base=base):
        raise ApplicationError("The proposed settings are the same as the current version.", code="no_change")
    return Prepared(
        target_type="policy",
        target_id=name,
        target_label=f"policy {name}",
        parameters={"name": name, "base_version": existing.current.number if existing else None, "settings": cleaned},
        quorum=quorum,
    )


def _policy_execute(req: ApprovalRequest) -> Outcome:
    p = req.parameters
    existing = Policy.objects.select_for_update().filter(name=p["name"]).first()
    current = existing.current.number if existing else None
    if current != p["base_version"]:
        raise Conflict(
            f"Policy {p['name']} changed since this request was opened (now v{current}); propose the change again."
        )
    version = policy_apply(name=p["name"], settings=p["settings"], actor=req.requester, request=req)
    return Outcome(result={"policy": p["name"], "version": version.number})


def _shown(value: Any) -> str:
    if value is None:
        return "default (NIST table)"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def policy_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Every setting that differs, as "name old → new" (nested quorum rules by their path)."""
    changes = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            changes.extend(policy_changes(before, after, f"{prefix}{name}."))
        else:
            changes.append(f"{prefix}{name} {_shown(before)} → {_shown(after)}")
    return changes


def _policy_describe(req: ApprovalRequest) -> str:
    p = req.parameters
    if p.get("base_version") is None:
        return f"Create the key policy '{p['name']}' with the settings below (version 1)."
    base = PolicyVersion.objects.filter(policy__name=p["name"], number=p["base_version"]).first()
    changes = policy_changes(clean_settings({}, base=settings_of(base)), p["settings"]) if base else []
    return (
        f"Change key policy '{p['name']}' from version {p['base_version']} to a new version"
        + (f". Changes: {'; '.join(changes)}" if changes else "")
        + ". Requests opened after it takes effect follow the new rules; pending ones keep theirs."
    )


def _custodian_prepare(requester: Any, target_id: str, p: dict[str, Any]) -> Prepared:
    _extra_none(p, "custodian_change", {"username", "roles"})
    username = p.get("username") or target_id
    user = get_user_model().objects.filter(username=username).first() if isinstance(username, str) else None
    if user is None:
        raise invalid("username", f"no user named {username!r}")
    if user.pk == requester.pk:
        raise ApplicationError("You cannot request a change of your own roles.", code="self_role_change")
    roles = p.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise invalid("roles", "must be a list of role names")
    accounts.check_roles(set(roles))
    before = sorted(accounts.roles_of(user))
    if before == sorted(set(roles)):
        raise ApplicationError(f"{username} already has exactly these roles.", code="no_change")
    return Prepared(
        target_type="user",
        target_id=str(user.pk),
        target_label=username,
        parameters={"username": username, "roles_before": before, "roles": sorted(set(roles))},
        quorum=_standard_quorum("custodian_change"),
    )


def _custodian_execute(req: ApprovalRequest) -> Outcome:
    user = get_user_model().objects.get(pk=req.target_id)
    if sorted(accounts.roles_of(user)) != req.parameters["roles_before"]:
        raise Conflict(f"The roles of {user.get_username()} changed since this request was opened.")
    accounts.set_roles(user=user, roles=set(req.parameters["roles"]), actor=req.requester, request_id=req.pk)
    return Outcome(result={"user": user.get_username(), "roles": req.parameters["roles"]})


def _custodian_describe(req: ApprovalRequest) -> str:
    p = req.parameters
    return f"Change the roles of {p['username']} from [{', '.join(p['roles_before']) or 'none'}] to [{', '.join(p['roles']) or 'none'}]."


def _hsm_prepare(requester: Any, target_id: str, p: dict[str, Any]) -> Prepared:
    if any(k in p for k in ("pin", "so_pin", "user_pin")):
        raise ApplicationError(
            "PINs are never sent to the console: give pin_env (an environment variable) or pin_file instead.",
            code="pin_not_accepted",
        )
    _extra_none(p, "hsm_change", {"action", "name", "module", "token_label", "pin_env", "pin_file", "location"})
    action = p.get("action", "register")
    name = p.get("name") or target_id
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise invalid("name", "must be 1-64 letters, digits, dots, dashes or underscores")
    if action == "retire":
        hsm = Hsm.objects.filter(name=name, retired_at__isnull=True).first()
        if hsm is None:
            raise invalid("name", f"no registered HSM named {name!r}")
        params = {"action": "retire", "name": name}
    elif action == "register":
        module = p.get("module")
        allowed = settings.KMS_PKCS11_ALLOWED_MODULES
        # Only modules the operator listed: approving a registration loads the module into the
        # console's processes, which approvers cannot judge for an arbitrary path.
        if not isinstance(module, str) or module not in allowed:
            raise invalid(
                "module", f"must be one of the PKCS#11 modules this installation allows: {', '.join(allowed)}"
            )
        label = p.get("token_label")
        if not isinstance(label, str) or not 1 <= len(label) <= 32:
            raise invalid("token_label", "must be the token's label (1-32 characters)")
        pin_env = p.get("pin_env") or ""
        pin_file = p.get("pin_file") or ""
        if pin_env and (not isinstance(pin_env, str) or not PIN_ENV_RE.match(pin_env)):
            raise invalid("pin_env", "must be a KMS_…_PIN environment variable name such as KMS_HSM2_PIN")
        if pin_file and (not isinstance(pin_file, str) or not _in_pin_dirs(pin_file)):
            raise invalid("pin_file", f"must be a file under {' or '.join(settings.KMS_HSM_PIN_DIRS)}")
        if not pin_env and not pin_file:
            raise invalid("pin_env", "give pin_env or pin_file: where the worker reads the token's PIN")
        location = p.get("location") or ""
        if not isinstance(location, str) or len(location) > 200:
            raise invalid("location", "must be text of at most 200 characters")
        if Hsm.objects.filter(name=name).exists():
            raise Conflict(f"An HSM named {name!r} is registered already.", code="hsm_exists")
        params = {
            "action": "register",
            "name": name,
            "module": module,
            "token_label": label,
            "pin_env": pin_env,
            "pin_file": pin_file,
            "location": location,
        }
    else:
        raise invalid("action", "must be register or retire")
    return Prepared(
        target_type="hsm",
        target_id=name,
        target_label=f"HSM {name}",
        parameters=params,
        quorum=_standard_quorum("hsm_change"),
    )


def _hsm_execute(req: ApprovalRequest) -> Outcome:
    p = req.parameters
    if p["action"] == "retire":
        hsm = hsm_retire(hsm=Hsm.objects.get(name=p["name"]), actor=req.requester, request=req)
    else:
        hsm = hsm_register(
            name=p["name"],
            module=p["module"],
            token_label=p["token_label"],
            pin_env=p["pin_env"],
            pin_file=p["pin_file"],
            location=p["location"],
            actor=req.requester,
            request=req,
        )
    return Outcome(result={"hsm": hsm.name})


def _hsm_describe(req: ApprovalRequest) -> str:
    p = req.parameters
    if p["action"] == "retire":
        return f"Retire HSM '{p['name']}': no new keys will be made on it."
    return (
        f"Register the token labelled '{p['token_label']}' (PKCS#11 module {p['module']}) as HSM '{p['name']}'; "
        f"the worker reads its PIN from {('$' + p['pin_env']) if p['pin_env'] else p['pin_file']}."
    )


# --- Registration ---------------------------------------------------------------------------------


def register_all() -> None:
    register(
        Action("policy_change", "Policy change", SECURITY_OFFICER, _policy_prepare, _policy_execute, _policy_describe)
    )
    register(
        Action(
            "custodian_change",
            "Role change",
            SECURITY_OFFICER,
            _custodian_prepare,
            _custodian_execute,
            _custodian_describe,
        )
    )
    register(Action("hsm_change", "HSM registration", SECURITY_OFFICER, _hsm_prepare, _hsm_execute, _hsm_describe))
