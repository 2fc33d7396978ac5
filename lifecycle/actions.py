"""The lifecycle's operations as dual-control actions (registered with `approvals.registry` at start-up).

For each operation: who may request it, how its parameters are validated and canonicalised (and
which quorum rule of which policy version applies), what runs once it is approved, and a sentence
that tells approvers in plain words what will happen. The services do the work; these functions
only translate between a request and a service call. Policy, role and HSM changes are in
`lifecycle.admin_actions`; backup, escrow, restore, export and import in `lifecycle.backups.actions`.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts import services as accounts
from approvals import services as approvals
from approvals.models import ApprovalRequest, RequestState
from approvals.registry import Action, Outcome, Prepared, register
from audit.services import record
from kms_console.lib.errors import ApplicationError, Conflict, NotFound
from kms_console.lib.roles import Role

from .hsm.base import ALGORITHMS, USAGE_ENCRYPT_DECRYPT, USAGE_MAC, USAGE_SIGN_VERIFY, USAGE_WRAP_UNWRAP, get_algorithm
from .models import Hsm, Job, JobStatus, Key, KeyGrant, Policy
from .policies import IMMEDIATE_OPERATIONS, NAME_RE, STANDARD_POLICY, quorum_for
from .services import jobs, keys

KEY_ADMIN = frozenset({Role.KEY_ADMIN})
IMMEDIATE_REQUESTERS = frozenset({Role.KEY_ADMIN, Role.CUSTODIAN, Role.SECURITY_OFFICER})

USAGES_BY_FAMILY = {
    "aes": (USAGE_ENCRYPT_DECRYPT, USAGE_WRAP_UNWRAP),
    "hmac": (USAGE_MAC,),
    "rsa": (USAGE_SIGN_VERIFY,),
    "ec": (USAGE_SIGN_VERIFY,),
}
MAX_TAGS = 20
MAX_EXCEPTION_DAYS = 30
USE_OPERATIONS = ("encrypt", "decrypt", "sign", "verify", "mac", "verify_mac")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:=/-]{0,49}$")


def invalid(field: str, message: str) -> ApplicationError:
    return ApplicationError(f"{field}: {message}", code="invalid", details={field: [message]})


def _get_key(target_id: str) -> Key:
    try:
        key_id = uuid.UUID(str(target_id))
    except ValueError:
        raise NotFound("No such key.") from None
    key = Key.objects.select_related("policy", "primary_version").filter(pk=key_id).first()
    if key is None:
        raise NotFound("No such key.")
    return key


def _requeue_or(req: ApprovalRequest, start: Callable[[], Job]) -> Outcome:
    """Run the request's HSM job: the one it already has (a retry), or a new one."""
    existing = Job.objects.filter(request=req).order_by("created_at").first()
    job = jobs.requeue(existing) if existing is not None else start()
    if job.status == JobStatus.SUCCEEDED:
        return Outcome(result={"job": str(job.pk)})
    return Outcome(result={"job": str(job.pk)}, pending=True)


def _extra_none(parameters: dict[str, Any], operation: str, allowed: set[str] | None = None) -> None:
    unknown = set(parameters) - (allowed or set())
    if unknown:
        raise ApplicationError(
            f"'{operation}' takes no parameter(s) {', '.join(sorted(unknown))}",
            code="invalid",
            details={name: ["Unknown field."] for name in unknown},
        )


# --- Generate -------------------------------------------------------------------------------------


def _parse_when(value: Any, field: str) -> dt.datetime:
    if not isinstance(value, str):
        raise invalid(field, "must be an ISO 8601 date and time, e.g. 2026-12-24T09:00:00Z")
    try:
        # parse_datetime answers None for a wrong shape and raises for a well-shaped impossible
        # value (2026-02-30, an offset of +99:00).
        parsed = parse_datetime(value.strip())
        if parsed is None:
            raise ValueError
        if parsed.tzinfo is None:
            raise invalid(field, "must include a time zone (for example a trailing Z for UTC)")
        return parsed.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise invalid(field, "must be an ISO 8601 date and time, e.g. 2026-12-24T09:00:00Z") from None


def clean_tags(tags: Any) -> list[str]:
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise invalid("tags", "must be a list of short texts")
    if len(tags) > MAX_TAGS:
        raise invalid("tags", f"at most {MAX_TAGS} tags")
    for tag in tags:
        if not TAG_RE.match(tag):
            raise invalid("tags", f"{tag!r} is not a valid tag (letters, digits and . _ : = / -, up to 50 characters)")
    return sorted(set(tags))


# Usages in words, for error texts that both a form and an API client read.
USAGE_WORDS = {
    "encrypt_decrypt": "to encrypt and decrypt data",
    "wrap_unwrap": "to wrap and unwrap other keys",
    "sign_verify": "to sign and verify",
    "mac": "to compute and verify MACs",
}


def _generate_prepare(requester: Any, target_id: str, p: dict[str, Any]) -> Prepared:
    _extra_none(p, "generate", {"name", "algorithm", "usage", "policy", "description", "tags", "activate_at", "hsm"})
    name = p.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise invalid(
            "name", "must be 1-64 letters, digits, dots, dashes or underscores, starting with a letter or digit"
        )
    algorithm = p.get("algorithm")
    if algorithm not in ALGORITHMS:
        raise invalid("algorithm", f"must be one of {', '.join(sorted(ALGORITHMS))}")
    family = get_algorithm(algorithm).family
    usage = p.get("usage")
    if usage not in USAGES_BY_FAMILY[family]:
        allowed = " or ".join(f"{USAGE_WORDS.get(u, u)} ({u})" for u in USAGES_BY_FAMILY[family])
        raise invalid("usage", f"{algorithm} keys may be used {allowed}")
    policy_name = p.get("policy") or STANDARD_POLICY
    policy = Policy.objects.filter(name=policy_name).first() if isinstance(policy_name, str) else None
    if policy is None:
        raise invalid("policy", f"no policy named {policy_name!r}")
    version = policy.current
    if algorithm not in version.algorithms:
        raise invalid(
            "algorithm", f"policy {policy.name} does not allow {algorithm} (it allows {', '.join(version.algorithms)})"
        )
    description = p.get("description") or ""
    if not isinstance(description, str) or len(description) > 2000:
        raise invalid("description", "must be text of at most 2000 characters")
    tags = clean_tags(p.get("tags"))
    if "activate_at" not in p:
        activate_at: dt.datetime | None = timezone.now()
    elif p["activate_at"] is None:
        activate_at = None
    else:
        activate_at = _parse_when(p["activate_at"], "activate_at")
    hsm_name = p.get("hsm")
    hsm = (
        Hsm.objects.filter(name=hsm_name, retired_at__isnull=True).first()
        if hsm_name
        else Hsm.objects.filter(is_default=True).first()
    )
    if hsm is None:
        raise invalid("hsm", f"no registered HSM named {hsm_name!r}" if hsm_name else "no default HSM is registered")
    if Key.objects.filter(name=name).exists():
        raise Conflict(f"A key named {name!r} exists already.", code="name_taken", details={"name": ["Already taken."]})
    if ApprovalRequest.objects.filter(operation="generate", state=RequestState.PENDING, parameters__name=name).exists():
        raise Conflict(
            f"A request to generate a key named {name!r} is waiting for approval already.", code="request_pending"
        )
    return Prepared(
        target_type="key",
        target_id="",
        target_label=name,
        parameters={
            "name": name,
            "algorithm": algorithm,
            "usage": usage,
            "policy": policy.name,
            "policy_version": version.number,
            "description": description,
            "tags": tags,
            "activate_at": activate_at.isoformat() if activate_at else None,
            "hsm": hsm.name,
        },
        quorum=quorum_for(version, "generate"),
    )


def _generate_execute(req: ApprovalRequest) -> Outcome:
    existing = Key.objects.filter(created_by_request=req).first()
    if existing is not None:  # a retry of a failed generation: run the same job (same CKA_ID) again
        job = jobs.requeue(Job.objects.filter(request=req).order_by("created_at").first())
        return Outcome(
            result={"key_id": str(existing.pk), "job": str(job.pk)}, pending=job.status != JobStatus.SUCCEEDED
        )
    p = req.parameters
    policy = Policy.objects.get(name=p["policy"])
    hsm = Hsm.objects.filter(name=p["hsm"], retired_at__isnull=True).first()
    if hsm is None:
        raise ApplicationError(f"HSM {p['hsm']} is no longer registered.")
    key = keys.key_create(
        name=p["name"],
        algorithm=p["algorithm"],
        usage=p["usage"],
        policy=policy,
        hsm=hsm,
        owner=req.requester,
        description=p["description"],
        tags=p["tags"],
        activate_at=parse_datetime(p["activate_at"]) if p["activate_at"] else None,
        request=req,
    )
    job = Job.objects.get(request=req)
    return Outcome(result={"key_id": str(key.pk), "job": str(job.pk)}, pending=True)


def _generate_describe(req: ApprovalRequest) -> str:
    p = req.parameters
    activate_at = parse_datetime(p["activate_at"]) if p.get("activate_at") else None
    if activate_at is None:
        when = "it stays in pre-activation until someone requests its activation"
    elif activate_at <= req.created_at:
        when = "it becomes active as soon as it is generated"
    else:
        when = f"it becomes active at {activate_at:%Y-%m-%d %H:%M} UTC (or once generated, if that is later)"
    return (
        f"Generate a new {p['algorithm']} key named '{p['name']}' for {p['usage'].replace('_', '/')} under policy "
        f"{p['policy']} v{p['policy_version']}, inside HSM '{p['hsm']}'; {when}. The key material never leaves the HSM in clear."
    )


# --- Operations on an existing key ----------------------------------------------------------------


def _key_prepare(
    operation: str,
    allowed_params: set[str] | None = None,
    clean: Callable[[Key, dict[str, Any]], dict[str, Any]] | None = None,
):
    def prepare(requester: Any, target_id: str, p: dict[str, Any]) -> Prepared:
        _extra_none(p, operation, allowed_params)
        key = _get_key(target_id)
        keys.check_operation_allowed(key, operation)
        extra = clean(key, p) if clean else {}
        version = key.policy.current
        primary = key.primary_version
        return Prepared(
            target_type="key",
            target_id=str(key.pk),
            target_label=key.name,
            parameters={
                "key": key.name,
                "state": key.state,
                "primary_version": primary.number if primary else None,
                "kcv": primary.kcv if primary else "",
                **extra,
            },
            quorum=quorum_for(version, operation),
        )

    return prepare


def _simple_execute(service: Callable[..., Key]) -> Callable[[ApprovalRequest], Outcome]:
    def execute(req: ApprovalRequest) -> Outcome:
        key = keys.lock_key(req.target_id)
        service(key, actor=req.requester, reason=req.justification, request=req)
        return Outcome(result={"key_id": str(key.pk), "state": key.state})

    return execute


def _rotate_execute(req: ApprovalRequest) -> Outcome:
    def start() -> Job:
        key = keys.lock_key(req.target_id)
        return keys.rotate(key, actor=req.requester, reason=req.justification, request=req)

    return _requeue_or(req, start)


def _destroy_execute(req: ApprovalRequest) -> Outcome:
    key = keys.lock_key(req.target_id)
    keys.schedule_destruction(key, actor=req.requester, reason=req.justification, request=req)
    return Outcome(result={"key_id": str(key.pk), "destroy_after": key.destroy_after.isoformat()})


def _open_review_if_immediate(req: ApprovalRequest) -> None:
    if req.required_approvals == 0 and req.operation in IMMEDIATE_OPERATIONS:
        approvals.open_review(req)


def _clean_exception(key: Key, p: dict[str, Any]) -> dict[str, Any]:
    until = _parse_when(p.get("until"), "until")
    now = timezone.now()
    if until <= now or until > now + dt.timedelta(days=MAX_EXCEPTION_DAYS):
        raise invalid("until", f"must lie in the next {MAX_EXCEPTION_DAYS} days")
    return {"until": until.isoformat()}


def _exception_execute(req: ApprovalRequest) -> Outcome:
    key = keys.lock_key(req.target_id)
    until = parse_datetime(req.parameters["until"])
    keys.grant_process_exception(key, until=until, actor=req.requester, reason=req.justification, request=req)
    return Outcome(result={"key_id": str(key.pk), "until": req.parameters["until"]})


def _clean_grant(key: Key, p: dict[str, Any]) -> dict[str, Any]:
    grantee_name = p.get("grantee")
    grantee = get_user_model().objects.filter(username=grantee_name).first() if isinstance(grantee_name, str) else None
    if grantee is None or Role.API_CLIENT not in accounts.roles_of(grantee):
        raise invalid("grantee", "must be the username of a service account (role api_client)")
    operations = p.get("operations")
    if not isinstance(operations, list) or not all(isinstance(o, str) for o in operations):
        raise invalid("operations", "must be a list of operations (an empty list revokes the grant)")
    usage_ops = {
        USAGE_ENCRYPT_DECRYPT: {"encrypt", "decrypt"},
        USAGE_SIGN_VERIFY: {"sign", "verify"},
        USAGE_MAC: {"mac", "verify_mac"},
        USAGE_WRAP_UNWRAP: set(),
    }[key.usage]
    bad = set(operations) - usage_ops
    if bad:
        raise invalid(
            "operations",
            f"{', '.join(sorted(bad))} do not fit a {key.usage} key (allowed: {', '.join(sorted(usage_ops)) or 'none'})",
        )
    return {"grantee": grantee.get_username(), "operations": sorted(set(operations))}


def _grant_execute(req: ApprovalRequest) -> Outcome:
    key = keys.lock_key(req.target_id)
    grantee = get_user_model().objects.get(username=req.parameters["grantee"])
    now = timezone.now()
    KeyGrant.objects.filter(key=key, grantee=grantee, revoked_at__isnull=True).update(revoked_at=now)
    grant = None
    if req.parameters["operations"]:
        grant = KeyGrant.objects.create(
            key=key, grantee=grantee, operations=req.parameters["operations"], created_at=now, request=req
        )
    record(
        "key.grant_changed",
        actor=req.requester,
        target_type="key",
        target_id=key.pk,
        details={
            "key": key.name,
            "grantee": grantee.get_username(),
            "operations": req.parameters["operations"],
            "request": str(req.pk),
        },
    )
    return Outcome(result={"key_id": str(key.pk), "grant": str(grant.pk) if grant else None})


def _describe_key(text: str) -> Callable[[ApprovalRequest], str]:
    def describe(req: ApprovalRequest) -> str:
        values = {name: ", ".join(v) if isinstance(v, list) else v for name, v in req.parameters.items()}
        values.update(
            key=req.parameters.get("key", req.target_label),
            version=req.parameters.get("primary_version"),
            kcv=req.parameters.get("kcv") or "-",
        )
        return text.format(**values)

    return describe


def _describe_destruction(req: ApprovalRequest) -> str:
    key = Key.objects.filter(pk=req.target_id).select_related("policy").first()
    days = key.policy.current.destruction_wait_days if key else "?"
    return (
        f"Schedule key '{req.target_label}' for destruction after the policy's waiting period of {days} day(s). "
        "Until then nothing may use it and the schedule can be cancelled; then a worker destroys every HSM "
        "object and backup of it, checks that they are gone and issues a certificate of destruction."
    )


# --- Registration ---------------------------------------------------------------------------------


def register_all() -> None:
    register(Action("generate", "Generate a key", KEY_ADMIN, _generate_prepare, _generate_execute, _generate_describe))
    register(
        Action(
            "activate",
            "Activate",
            KEY_ADMIN,
            _key_prepare("activate"),
            _simple_execute(keys.activate),
            _describe_key(
                "Activate key '{key}' (version {version}, key check value {kcv}): it may encrypt, sign or MAC from now on, for the originator-usage period of its policy."
            ),
        )
    )
    register(
        Action(
            "rotate",
            "Rotate",
            KEY_ADMIN,
            _key_prepare("rotate"),
            _rotate_execute,
            _describe_key(
                "Generate a new version of key '{key}' inside the HSM and make it primary; version {version} stops protecting new data but can still decrypt and verify until its recipient-usage period ends."
            ),
        )
    )
    register(
        Action(
            "suspend",
            "Suspend",
            IMMEDIATE_REQUESTERS,
            _key_prepare("suspend"),
            _simple_execute(keys.suspend),
            _describe_key("Suspend key '{key}': nothing may use it until it is resumed."),
            after_executed=_open_review_if_immediate,
        )
    )
    register(
        Action(
            "resume",
            "Resume",
            KEY_ADMIN,
            _key_prepare("resume"),
            _simple_execute(keys.resume),
            _describe_key("Resume key '{key}': it becomes active again and may be used as before its suspension."),
        )
    )
    register(
        Action(
            "deactivate",
            "Deactivate",
            KEY_ADMIN,
            _key_prepare("deactivate"),
            _simple_execute(keys.deactivate),
            _describe_key(
                "Deactivate key '{key}': it can no longer encrypt, sign or MAC; it can still decrypt and verify data it protected."
            ),
        )
    )
    register(
        Action(
            "compromise",
            "Mark compromised",
            IMMEDIATE_REQUESTERS,
            _key_prepare("compromise"),
            _simple_execute(keys.compromise),
            _describe_key(
                "Mark key '{key}' compromised: every use stops for good and a revocation notice is recorded; only destruction can follow."
            ),
            after_executed=_open_review_if_immediate,
        )
    )
    register(
        Action(
            "schedule_destruction",
            "Schedule destruction",
            KEY_ADMIN,
            _key_prepare("schedule_destruction"),
            _destroy_execute,
            _describe_destruction,
        )
    )
    register(
        Action(
            "cancel_destruction",
            "Cancel destruction",
            KEY_ADMIN,
            _key_prepare("cancel_destruction"),
            _simple_execute(keys.cancel_destruction),
            _describe_key(
                "Cancel the scheduled destruction of key '{key}'; it returns to normal use in its current state."
            ),
        )
    )
    register(
        Action(
            "process_exception",
            "Processing exception",
            frozenset({Role.KEY_ADMIN, Role.CUSTODIAN}),
            _key_prepare("process_exception", {"until"}, _clean_exception),
            _exception_execute,
            _describe_key(
                "Allow the compromised key '{key}' to decrypt and verify (never encrypt or sign) until {until}."
            ),
        )
    )
    register(
        Action(
            "grant",
            "Grant key use",
            frozenset({Role.KEY_ADMIN, Role.SECURITY_OFFICER}),
            _key_prepare("grant", {"grantee", "operations"}, _clean_grant),
            _grant_execute,
            _describe_key("Let service account {grantee} use key '{key}' for: {operations}."),
        )
    )
