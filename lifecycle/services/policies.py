"""Policy versions and HSM registrations: what the approved policy_change and hsm_change requests run."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import record
from kms_console.lib.errors import ApplicationError, Conflict

from ..models import Hsm, Policy, PolicyVersion, Restore, RestoreState, VersionCopy
from ..policies import clean_settings


def policy_apply(*, name: str, settings: dict[str, Any], actor: Any, request: Any = None) -> PolicyVersion:
    """Create a policy or a new version of it; the new version becomes current at once."""
    with transaction.atomic():
        return _policy_apply(name=name, settings=settings, actor=actor, request=request)


def _policy_apply(*, name: str, settings: dict[str, Any], actor: Any, request: Any) -> PolicyVersion:
    cleaned = clean_settings(settings)
    now = timezone.now()
    policy = Policy.objects.select_for_update().filter(name=name).first()
    if policy is None:
        policy = Policy.objects.create(name=name, created_at=now)
        number = 1
    else:
        number = (policy.versions.order_by("-number").values_list("number", flat=True).first() or 0) + 1
        policy.versions.filter(is_current=True).update(is_current=False)
    version = PolicyVersion.objects.create(
        policy=policy,
        number=number,
        is_current=True,
        created_at=now,
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
        request=request,
        **cleaned,
    )
    record(
        "policy.version_created",
        actor=actor,
        target_type="policy",
        target_id=policy.pk,
        details={
            "policy": name,
            "version": number,
            "request": str(request.pk) if request is not None else None,
            "settings": cleaned,
        },
    )
    return version


def hsm_register(
    *,
    name: str,
    module: str,
    token_label: str,
    pin_env: str,
    pin_file: str,
    location: str,
    actor: Any,
    request: Any = None,
) -> Hsm:
    """Register a token after checking that it answers with the PIN source given."""
    probe = Hsm(name=name, module=module, token_label=token_label, pin_env=pin_env, pin_file=pin_file)
    health = probe.backend().health()
    if not health.ok:
        raise ApplicationError(f"The token could not be reached: {health.error}", code="hsm_unreachable")
    try:
        with transaction.atomic():
            hsm = Hsm.objects.create(
                name=name,
                module=module,
                token_label=token_label,
                pin_env=pin_env,
                pin_file=pin_file,
                location=location,
                registered_at=timezone.now(),
                is_default=not Hsm.objects.exists(),
            )
    except IntegrityError:
        raise Conflict(
            f"An HSM named {name!r} or this module and token are registered already.", code="hsm_exists"
        ) from None
    record(
        "hsm.registered",
        actor=actor,
        target_type="hsm",
        target_id=hsm.pk,
        details={
            "name": name,
            "module": module,
            "token_label": token_label,
            "pin_env": pin_env,
            "pin_file": pin_file,
            "request": str(request.pk) if request is not None else None,
        },
    )
    return hsm


@transaction.atomic
def hsm_retire(*, hsm: Hsm, actor: Any, request: Any = None) -> Hsm:
    """Retire an HSM that holds nothing of the console's: no version lives there, no version has a
    copy there (a restore into another HSM leaves one; destroying the version removes it), and no
    restore is on its way there."""
    hsm = Hsm.objects.select_for_update().get(pk=hsm.pk)
    if hsm.is_default:
        raise Conflict("The default HSM cannot be retired.", code="hsm_default")
    if hsm.versions.exclude(state="destroyed").exists():
        raise Conflict(f"HSM {hsm.name} still holds live key versions.", code="hsm_in_use")
    copies = list(
        VersionCopy.objects.filter(hsm=hsm, ended_at__isnull=True)
        .select_related("version__key")
        .order_by("version__key__name", "version__number")
    )
    if copies:
        named = ", ".join(f"{c.version.key.name} v{c.version.number}" for c in copies[:10])
        raise Conflict(
            f"HSM {hsm.name} still holds copies of key versions that were restored into another HSM ({named}"
            f"{', …' if len(copies) > 10 else ''}); they go when those versions are destroyed.",
            code="hsm_in_use",
        )
    if Restore.objects.filter(target_hsm=hsm, state__in=[RestoreState.COLLECTING, RestoreState.RESTORING]).exists():
        raise Conflict(
            f"A restore into HSM {hsm.name} is in progress; retire it once the restore has ended.", code="hsm_in_use"
        )
    hsm.retired_at = timezone.now()
    hsm.save(update_fields=["retired_at"])
    record(
        "hsm.retired",
        actor=actor,
        target_type="hsm",
        target_id=hsm.pk,
        details={"name": hsm.name, "request": str(request.pk) if request is not None else None},
    )
    return hsm
