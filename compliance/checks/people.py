"""Checks of the people: acknowledgements, second factors and separation of duties."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Exists, F, Max, OuterRef, Q
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import responsibilities
from accounts.models import Acknowledgement
from approvals.models import Decision
from audit.models import AuditEvent
from kms_console.lib.roles import PRIVILEGED_ROLES, Role

from ..links import audit_url, request_url, user_url
from .base import WARN, Check, CheckResult, Context, Offender, result

# Warn this long before a custodian's acknowledgement runs out.
ACKNOWLEDGEMENT_WARNING = dt.timedelta(days=30)


@dataclass(frozen=True)
class RoleHolder:
    user: Any
    roles: frozenset[str]
    has_totp: bool

    @property
    def name(self) -> str:
        return self.user.get_username()


def role_holders(ctx: Context) -> list[RoleHolder]:
    """Active users holding any role, with their roles and whether they have a confirmed TOTP device."""

    def compute() -> list[RoleHolder]:
        users = (
            get_user_model()
            .objects.filter(is_active=True, groups__name__in=Role.values)
            .distinct()
            .annotate(has_totp=Exists(TOTPDevice.objects.filter(user=OuterRef("pk"), confirmed=True)))
            .prefetch_related("groups")
            .order_by("username")
        )
        return [
            RoleHolder(user, frozenset(g.name for g in user.groups.all()) & frozenset(Role.values), user.has_totp)
            for user in users
        ]

    return ctx.cached("people.role_holders", compute)


def acknowledgements(ctx: Context) -> CheckResult:
    custodians = [h for h in role_holders(ctx) if Role.CUSTODIAN in h.roles]
    valid_for = dt.timedelta(days=ctx.setting("KMS_ACKNOWLEDGEMENT_VALID_DAYS", 365))
    latest = dict(
        Acknowledgement.objects.filter(
            user_id__in=[h.user.pk for h in custodians], text_version=responsibilities.VERSION
        )
        .values("user_id")
        .annotate(last=Max("acknowledged_at"))
        .values_list("user_id", "last")
    )
    offenders = []
    current = 0
    for holder in custodians:
        last = latest.get(holder.user.pk)
        url = user_url(holder.name)
        if last is None:
            reason = f"has not acknowledged version {responsibilities.VERSION} of the responsibilities"
            offenders.append(Offender("user", holder.name, reason, url))
            continue
        expires = last + valid_for
        if expires <= ctx.now:
            offenders.append(Offender("user", holder.name, f"acknowledgement expired on {expires:%Y-%m-%d}", url))
            continue
        current += 1
        if expires - ctx.now <= ACKNOWLEDGEMENT_WARNING:
            reason = f"acknowledgement expires on {expires:%Y-%m-%d}"
            offenders.append(Offender("user", holder.name, reason, url, severity=WARN))
    figure = (
        f"{current} of {len(custodians)} custodians hold a current "
        f"acknowledgement of the responsibilities (version {responsibilities.VERSION})"
    )
    return result("acknowledgements", figure, offenders, applicable=bool(custodians))


def mfa(ctx: Context) -> CheckResult:
    holders = role_holders(ctx)
    privileged = [h for h in holders if h.roles & PRIVILEGED_ROLES]
    offenders = []
    for holder in privileged:
        if not holder.has_totp:
            roles = ", ".join(sorted(holder.roles & PRIVILEGED_ROLES))
            offenders.append(
                Offender("user", holder.name, f"{roles} without a confirmed TOTP device", user_url(holder.name))
            )
    for holder in holders:
        if Role.AUDITOR in holder.roles and not holder.has_totp:
            reason = "auditor without a confirmed TOTP device (signs in with a password only)"
            offenders.append(Offender("user", holder.name, reason, user_url(holder.name), severity=WARN))
    enrolled = sum(1 for h in privileged if h.has_totp)
    figure = f"{enrolled} of {len(privileged)} privileged users have a confirmed TOTP device"
    auditors = [h for h in holders if Role.AUDITOR in h.roles and not h.roles & PRIVILEGED_ROLES]
    if auditors:
        figure += f"; {sum(1 for h in auditors if h.has_totp)} of {len(auditors)} auditors"
    return result("mfa", figure, offenders, applicable=bool(holders))


def separation_of_duties(ctx: Context) -> CheckResult:
    holders = role_holders(ctx)
    offenders = []
    for holder in holders:
        if Role.AUDITOR in holder.roles and len(holder.roles) > 1:
            others = ", ".join(sorted(holder.roles - {Role.AUDITOR}))
            offenders.append(Offender("user", holder.name, f"auditor who also holds {others}", user_url(holder.name)))
        elif Role.API_CLIENT in holder.roles and len(holder.roles) > 1:
            others = ", ".join(sorted(holder.roles - {Role.API_CLIENT}))
            reason = f"service account that also holds the human role(s) {others}"
            offenders.append(Offender("user", holder.name, reason, user_url(holder.name)))
    # The database refuses a decision whose approver is the requester; check the history all the same.
    self_decisions = Decision.objects.filter(
        Q(approver_id=F("requester_id")) | Q(approver_id=F("request__requester_id"))
    ).select_related("approver", "request")
    for decision in self_decisions:
        req = decision.request
        offenders.append(
            Offender(
                "request",
                f"{req.operation} of {req.target_label or req.target_id} ({req.short_id})",
                f"{decision.approver.get_username()} decided on their own request",
                request_url(req.pk),
            )
        )
    admins = get_user_model().objects.filter(is_active=True).filter(Q(is_superuser=True) | Q(is_staff=True))
    for user in admins.order_by("username"):
        reason = "can change roles (group memberships) in the Django admin, outside dual control and the audit trail"
        offenders.append(Offender("user", user.get_username(), reason, user_url(user.get_username()), severity=WARN))
    offenders.extend(_grants_outside_dual_control())
    conflicts = sum(1 for o in offenders if o.kind == "user" and o.severity != WARN)
    selfs = sum(1 for o in offenders if o.kind == "request")
    grants = sum(1 for o in offenders if o.kind == "audit_event")
    figure = (
        f"{conflicts} conflicting role holders among {len(holders)} users with roles; {selfs} self-approvals; "
        f"{grants} role grants outside dual control"
    )
    return result("separation_of_duties", figure, offenders, applicable=bool(holders))


def _grants_outside_dual_control() -> list[Offender]:
    """Role grants that bypassed a custodian_change request once dual control was running.

    Bootstrap ends with the first request that reached its quorum: before it there is nobody to
    approve a role change, so `kms_user create` is the only way in. After it, roles granted from the
    command line (`user.provisioned` via cli) or changed without a request are listed.
    """
    first_approval = (
        AuditEvent.objects.filter(action="request.approved").order_by("seq").values_list("seq", flat=True).first()
    )
    if first_approval is None:
        return []
    offenders = []
    events = AuditEvent.objects.filter(
        Q(action="user.provisioned", via="cli") | Q(action="user.roles_changed"), seq__gt=first_approval
    ).order_by("seq")
    for event in events:
        details = event.details or {}
        username = str(details.get("username") or event.target_id)
        if event.action == "user.provisioned":
            added = sorted(set(details.get("roles") or []) - set(details.get("roles_before") or []))
            if not added:
                continue
            reason = f"granted {', '.join(added)} from the command line (event #{event.seq}) after dual control began"
        elif details.get("request"):
            continue
        else:
            reason = f"roles changed without an approval request (event #{event.seq})"
        offenders.append(Offender("audit_event", username, reason, audit_url(event.action), severity=WARN))
    return offenders


CHECKS = (
    Check(
        "acknowledgements",
        "Custodians acknowledged their responsibilities",
        "Every active custodian has acknowledged the current version of the key custodian responsibilities "
        "text within the renewal period (12 months by default). Acknowledgements that run out within 30 days "
        "are a warning.",
        acknowledgements,
    ),
    Check(
        "mfa",
        "Privileged users have a second factor",
        "Every active key administrator, custodian and security officer has a confirmed TOTP device, which the "
        "console demands at sign-in and with every approval. Auditors without one are a warning.",
        mfa,
    ),
    Check(
        "separation_of_duties",
        "Separation of duties",
        "No auditor holds another role and no service account holds a human role; nobody decided on their own "
        "request; no roles were granted outside dual control once it was running (from the command line, or "
        "changed without a request); accounts that can use the Django admin (staff or superuser) are a warning "
        "because they could change group memberships there.",
        separation_of_duties,
    ),
)
