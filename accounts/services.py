"""Users, roles, second factors, acknowledgements and API tokens.

Roles are Django groups named after `kms_console.lib.roles.Role`. Changing the roles of an existing
user is a dual-controlled operation (`custodian_change`): `set_roles` is what the approved request
executes. `provision_user` is the operator's bootstrap path (`manage.py kms_user create`), audited
as such and reported by the compliance checks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.locking import lock_trail
from audit.services import record
from kms_console.lib.errors import ApplicationError, Conflict, Forbidden
from kms_console.lib.roles import APPROVER_ROLES, PRIVILEGED_ROLES, Role, validate_role_set

from . import responsibilities
from .models import Acknowledgement, ApiToken, LoginThrottle

User = get_user_model()

TOKEN_PREFIX = "kms_"


# --- Roles ----------------------------------------------------------------------------------------


def roles_of(user: Any) -> set[str]:
    """The user's roles. Uses a prefetched `groups` when the caller prefetched it."""
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return set()
    cached = getattr(user, "_kms_roles", None)
    if cached is not None:
        return cached
    roles = {group.name for group in user.groups.all()} & set(Role.values)
    user._kms_roles = roles
    return roles


def has_role(user: Any, *roles: str) -> bool:
    return bool(roles_of(user) & set(roles))


def is_privileged(user: Any) -> bool:
    return bool(roles_of(user) & PRIVILEGED_ROLES)


def users_with_role(role: str) -> Any:
    return User.objects.filter(is_active=True, groups__name=role).distinct()


def _apply_roles(user: Any, roles: set[str]) -> None:
    groups = []
    for role in sorted(roles):
        group, _ = Group.objects.get_or_create(name=role)
        groups.append(group)
    user.groups.set(groups)
    user._kms_roles = set(roles)


def check_roles(roles: set[str]) -> None:
    problem = validate_role_set(roles)
    if problem:
        raise ApplicationError(problem, code="invalid_roles", details={"roles": sorted(roles)})


def set_roles(*, user: Any, roles: set[str], actor: Any, request_id: Any = None) -> None:
    """Replace a user's roles. Callers: the approved custodian_change request only."""
    check_roles(roles)
    with transaction.atomic():
        lock_trail()  # the audit head before any row: one lock order for every writer
        locked = User.objects.select_for_update().get(pk=user.pk)
        before = sorted(roles_of(locked))
        _apply_roles(locked, roles)
        record(
            "user.roles_changed",
            actor=actor,
            target_type="user",
            target_id=locked.pk,
            details={
                "username": locked.get_username(),
                "before": before,
                "after": sorted(roles),
                "request": str(request_id or ""),
            },
        )


# --- Second factor --------------------------------------------------------------------------------


def confirmed_device(user: Any) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=user, confirmed=True).order_by("id").first()


def has_confirmed_device(user: Any) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def start_totp_enrolment(user: Any) -> tuple[TOTPDevice, bool]:
    """An unconfirmed device for the enrolment page, and whether it replaced an earlier unconfirmed one.

    Its secret is shown only to the session that started it: a later sign-in (maybe someone else's,
    with the password alone) gets a new secret, which makes one scanned earlier stop working, so
    the user notices instead of sharing a secret unknowingly; the page then says so."""
    with transaction.atomic():
        lock_trail()  # the one lock order: chain head, then rows (confirm takes them the same way)
        replaced = TOTPDevice.objects.filter(user=user, confirmed=False).delete()[0] > 0
        device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=False)
        record(
            "otp.enrolment_started", actor=user, target_type="user", target_id=user.pk, details={"replaced": replaced}
        )
    return device, replaced


def confirm_totp_enrolment(*, user: Any, device_id: int, code: str, replacing: bool = False) -> TOTPDevice:
    """Confirm a pending device with a code from it. Other devices (confirmed, or pending in other
    sessions) are retired. Only a session verified with the current device may replace it
    (`replacing`); a session with the password alone may only enrol the first device, which is
    checked here, under the lock, so two such sessions cannot both confirm."""
    with transaction.atomic():
        lock_trail()
        device = TOTPDevice.objects.select_for_update().filter(user=user, pk=device_id, confirmed=False).first()
        if device is None:
            raise ApplicationError("There is no enrolment waiting for confirmation; start again.", code="no_enrolment")
        if not replacing and TOTPDevice.objects.filter(user=user, confirmed=True).exists():
            raise ApplicationError(
                "A device was confirmed for this account meanwhile; sign in with its codes.", code="totp_exists"
            )
        if not verify_device_code(device, code):
            record("otp.enrolment_failed", actor=user, target_type="user", target_id=user.pk)
            failed = True
        else:
            failed = False
            TOTPDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
            device.confirmed = True
            device.save(update_fields=["confirmed"])
            record(
                "otp.enrolled",
                actor=user,
                target_type="user",
                target_id=user.pk,
                details={"device": device.persistent_id},
            )
    if failed:
        raise ApplicationError(
            "That code is not valid for the new device. Check the device's clock and try again.", code="otp_invalid"
        )
    return device


def verify_device_code(device: TOTPDevice, code: str | None) -> bool:
    """django-otp's check: rejects replays in the same time step and throttles after failures."""
    code = (code or "").strip().replace(" ", "")
    # ASCII digits only: str.isdigit() and int() also accept other scripts' digits (e.g. fullwidth).
    if not (code.isascii() and code.isdigit()) or len(code) != device.digits:
        # Count malformed codes as failures too, so guessing shapes earns the same back-off.
        device.throttle_increment()
        return False
    return bool(device.verify_token(code))


def verify_user_otp(*, user: Any, code: str | None, purpose: str) -> TOTPDevice | None:
    """Verify a TOTP code of the user's confirmed device under a row lock; audit failures.

    Call inside a transaction that commits even when this returns None: django-otp's throttle and
    replay counters live on the device row and must survive a refused attempt.
    """
    lock_trail()
    device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=True).order_by("id").first()
    if device is None:
        return None
    if verify_device_code(device, code):
        return device
    record(
        "otp.failed",
        actor=user,
        target_type="user",
        target_id=user.pk,
        details={"purpose": purpose, "throttled_until": _throttle_until(device)},
    )
    return None


def _throttle_until(device: TOTPDevice) -> str:
    """When the device accepts codes again (django-otp doubles the wait after each failure)."""
    allowed, data = device.verify_is_allowed()
    if allowed or not data or not data.get("locked_until"):
        return ""
    return data["locked_until"].isoformat()


# --- Acknowledgements -----------------------------------------------------------------------------


def current_acknowledgement(user: Any, *, now: dt.datetime | None = None) -> Acknowledgement | None:
    now = now or timezone.now()
    cutoff = now - dt.timedelta(days=settings.KMS_ACKNOWLEDGEMENT_VALID_DAYS)
    return (
        Acknowledgement.objects.filter(user=user, text_version=responsibilities.VERSION, acknowledged_at__gt=cutoff)
        .order_by("-acknowledged_at")
        .first()
    )


def has_current_acknowledgement(user: Any) -> bool:
    return current_acknowledgement(user) is not None


def acknowledge(*, user: Any, actor: Any = None) -> Acknowledgement:
    with transaction.atomic():
        ack = Acknowledgement.objects.create(
            user=user,
            text_version=responsibilities.VERSION,
            text_digest=responsibilities.DIGEST,
            acknowledged_at=timezone.now(),
        )
        record(
            "custodian.acknowledged",
            actor=actor or user,
            target_type="user",
            target_id=user.pk,
            details={"username": user.get_username(), "version": ack.text_version, "digest": ack.text_digest},
        )
    return ack


def approver_problem(user: Any, role_needed: set[str] | None = None) -> str | None:
    """Why this user may not approve now (None when they may). Used by the dual-control engine."""
    roles = roles_of(user)
    if not user.is_active:
        return "the account is disabled"
    if Role.AUDITOR in roles or Role.API_CLIENT in roles:
        return "auditors and service accounts never approve"
    if not roles & APPROVER_ROLES:
        return "key administrators request steps and never approve them"
    if role_needed is not None and not (roles & role_needed):
        return f"approving needs one of the roles: {', '.join(sorted(role_needed))}"
    if not has_confirmed_device(user):
        return "approving needs a confirmed TOTP device"
    if Role.CUSTODIAN in roles and not has_current_acknowledgement(user):
        return "approving needs a current acknowledgement of the custodian responsibilities"
    return None


# --- Provisioning (operator bootstrap) ------------------------------------------------------------


def provision_user(
    *,
    username: str,
    roles: set[str],
    password: str | None,
    email: str = "",
    enrol_totp: bool = False,
) -> tuple[Any, str | None, bool]:
    """Create or update a user from the operator's shell. Returns (user, otpauth_uri, created).

    This is the operator's bootstrap path: a new user gets the roles given here directly, audited
    as `user.provisioned` (via cli); the compliance checks list every role grant that did not come
    through a dual-controlled request. An existing user is only updated where that cannot take over
    an approver: email and password may change; roles change only if the user has none yet (every
    other role change is a dual-controlled `custodian_change`); a TOTP device is enrolled only if the
    user has no confirmed one (a lost device is removed first with `kms_user reset-totp`, audited).
    """
    check_roles(roles)
    if password is not None:
        try:
            validate_password(password, user=User(username=username, email=email))
        except ValidationError as exc:
            raise ApplicationError(" ".join(exc.messages), code="weak_password") from None
    uri = None
    with transaction.atomic():
        lock_trail()
        user, created = User.objects.select_for_update().get_or_create(username=username, defaults={"email": email})
        before = sorted(roles_of(user)) if not created else []
        if before and set(before) != roles:
            raise Conflict(
                f"{username} already holds roles ({', '.join(before)}); roles of an existing user change only "
                "through a dual-controlled role change (a security officer proposes it in the console or the API).",
                code="role_change_needs_approval",
            )
        if enrol_totp and not created and has_confirmed_device(user):
            raise Conflict(
                f"{username} already has a confirmed TOTP device. If it was lost, remove it with "
                f"`kms_user reset-totp {username}` (audited); the user then enrols again at sign-in.",
                code="totp_exists",
            )
        if email and user.email != email:
            user.email = email
        if password is not None:
            user.set_password(password)
            # A secret shown to a session that had only the old password must not survive it.
            TOTPDevice.objects.filter(user=user, confirmed=False).delete()
        elif created:
            user.set_unusable_password()
        user.save()
        if set(before) != roles:
            _apply_roles(user, roles)
        if enrol_totp:
            TOTPDevice.objects.filter(user=user).delete()
            device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True)
            uri = device.config_url
        record(
            "user.provisioned",
            target_type="user",
            target_id=user.pk,
            details={
                "username": username,
                "created": created,
                "roles_before": before,
                "roles": sorted(roles),
                "password_set": password is not None,
                "totp_enrolled": enrol_totp,
            },
        )
    return user, uri, created


def reset_totp(*, username: str) -> Any:
    """Remove a user's TOTP devices (a lost authenticator): they enrol a new one at their next
    sign-in. The operator's recovery path, audited as `otp.reset` (via cli)."""
    with transaction.atomic():
        lock_trail()
        user = User.objects.select_for_update().filter(username=username).first()
        if user is None:
            raise ApplicationError(f"no user named {username!r}", code="no_user")
        removed = TOTPDevice.objects.filter(user=user).count()
        TOTPDevice.objects.filter(user=user).delete()
        record(
            "otp.reset",
            target_type="user",
            target_id=user.pk,
            details={"username": username, "devices_removed": removed},
        )
    return user


# --- API tokens -----------------------------------------------------------------------------------


def _token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def default_scopes(user: Any) -> set[str]:
    """The scopes a user's roles can use: read for everyone; request for key administrators,
    custodians and security officers; approve for approvers; use for key owners and service accounts."""
    roles = roles_of(user)
    scopes = {ApiToken.Scope.READ.value}
    if roles & {Role.KEY_ADMIN, Role.CUSTODIAN, Role.SECURITY_OFFICER}:
        scopes.add(ApiToken.Scope.REQUEST.value)
    if roles & APPROVER_ROLES:
        scopes.add(ApiToken.Scope.APPROVE.value)
    if roles & {Role.KEY_ADMIN, Role.API_CLIENT}:
        scopes.add(ApiToken.Scope.USE.value)
    return scopes


def create_token(
    *,
    user: Any,
    scopes: list[str] | None = None,
    expires_in_days: int | None = None,
    name: str = "",
    actor: Any = None,
    parent: ApiToken | None = None,
) -> tuple[ApiToken, str]:
    """Make a token; the raw value is returned once and never stored. Without scopes it carries all
    of them (the roles still decide what it may do); `kms_token` asks for `default_scopes` instead.
    `parent` is the token that mints this one (through the API): revoking it revokes this one."""
    valid = set(ApiToken.Scope.values)
    scopes = sorted(set(scopes or valid))
    bad = set(scopes) - valid
    if bad:
        raise ApplicationError(f"unknown scope(s): {', '.join(sorted(bad))}", code="invalid_scope")
    if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
        raise ApplicationError("expires-in must be between 1 and 3650 days", code="invalid_expiry")
    if not user.is_active:
        raise Conflict("the user is disabled")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = timezone.now()
    with transaction.atomic():
        if parent is not None:
            # Under the parent's row lock: a revocation that committed since the request was
            # authenticated is seen here, so no child is ever born to a revoked parent.
            parent = ApiToken.objects.select_for_update().get(pk=parent.pk)
            if parent.revoked_at is not None or (parent.expires_at is not None and parent.expires_at <= now):
                raise Forbidden("The token making this request was revoked or has expired.", code="token_revoked")
        token = ApiToken.objects.create(
            user=user,
            name=name,
            prefix=raw[: len(TOKEN_PREFIX) + 8],
            digest=_token_digest(raw),
            scopes=scopes,
            created_at=now,
            expires_at=now + dt.timedelta(days=expires_in_days) if expires_in_days else None,
            parent=parent,
        )
        record(
            "token.created",
            actor=actor,
            target_type="token",
            target_id=token.pk,
            details={
                "user": user.get_username(),
                "prefix": token.prefix,
                "scopes": scopes,
                "expires_at": token.expires_at.isoformat() if token.expires_at else None,
                "parent": parent.prefix if parent is not None else None,
            },
        )
    return token, raw


def revoke_token(*, token: ApiToken, actor: Any = None) -> ApiToken:
    """Revoke the token and, with it, every live token it minted (and those they minted)."""
    with transaction.atomic():
        token = ApiToken.objects.select_for_update().get(pk=token.pk)
        now = timezone.now()
        if token.revoked_at is None:
            token.revoked_at = now
            token.save(update_fields=["revoked_at"])
            record(
                "token.revoked", actor=actor, target_type="token", target_id=token.pk, details={"prefix": token.prefix}
            )
        parents = [token.pk]
        while parents:  # one query per generation; lineages are short
            children = list(ApiToken.objects.select_for_update().filter(parent_id__in=parents, revoked_at__isnull=True))
            for child in children:
                child.revoked_at = now
                child.save(update_fields=["revoked_at"])
                record(
                    "token.revoked",
                    actor=actor,
                    target_type="token",
                    target_id=child.pk,
                    details={"prefix": child.prefix, "with_parent": token.prefix},
                )
            parents = [child.pk for child in children]
    return token


def authenticate_token(raw: str) -> ApiToken | None:
    """The live token for this raw value, or None. Updates last-used at most once a minute."""
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    token = ApiToken.objects.select_related("user").filter(digest=_token_digest(raw)).first()
    if token is None:
        return None
    now = timezone.now()
    if token.revoked_at is not None or (token.expires_at and token.expires_at <= now) or not token.user.is_active:
        record(
            "token.denied",
            actor=token.user,
            target_type="token",
            target_id=token.pk,
            details={"prefix": token.prefix, "reason": "revoked" if token.revoked_at else "expired or user disabled"},
        )
        return None
    if token.last_used_at is None or now - token.last_used_at > dt.timedelta(minutes=1):
        # A plain UPDATE, outside any lock: last-used is informational and may lag a minute.
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


# --- Sign-in lockout ------------------------------------------------------------------------------


def login_locked_until(username: str) -> dt.datetime | None:
    row = LoginThrottle.objects.filter(username=username[:150]).first()
    if row and row.locked_until and row.locked_until > timezone.now():
        return row.locked_until
    return None


def register_login_failure(username: str, *, reason: str) -> dt.datetime | None:
    """Count a failed sign-in; lock the account after KMS_LOGIN_MAX_FAILURES. Returns the lock end."""
    username = username[:150]
    now = timezone.now()
    with transaction.atomic():
        row, _ = LoginThrottle.objects.select_for_update().get_or_create(username=username)
        row.failures += 1
        row.last_failure_at = now
        if row.failures >= settings.KMS_LOGIN_MAX_FAILURES:
            row.locked_until = now + dt.timedelta(seconds=settings.KMS_LOGIN_LOCKOUT_SECONDS)
            row.failures = 0
        row.save()
        record(
            "auth.login_failed",
            details={
                "username": username,
                "reason": reason,
                "locked_until": row.locked_until.isoformat() if row.locked_until and row.locked_until > now else None,
            },
        )
        if row.locked_until and row.locked_until > now:
            record("auth.account_locked", details={"username": username, "until": row.locked_until.isoformat()})
            return row.locked_until
    return None


def register_login_success(user: Any) -> None:
    with transaction.atomic():
        LoginThrottle.objects.filter(username=user.get_username()).update(failures=0, locked_until=None)
        record("auth.login", actor=user, target_type="user", target_id=user.pk)


def register_logout(user: Any) -> None:
    """The user signed out of the console (an idle session ending is `auth.session_expired`)."""
    record("auth.logout", actor=user, target_type="user", target_id=user.pk)
