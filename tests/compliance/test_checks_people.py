"""People: custodians' acknowledgements, second factors, separation of duties."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from accounts import responsibilities
from accounts.models import Acknowledgement
from accounts.services import provision_user
from approvals.models import Decision
from audit.context import acting
from audit.services import record
from compliance.checks.base import FAIL, PASS, WARN
from tests.conftest import make_user

from .helpers import approved_request, labels, mark_dual_control_running, run

pytestmark = pytest.mark.django_db


# --- Acknowledgements -----------------------------------------------------------------------------


def test_acknowledgements_pass_when_every_custodian_acknowledged_the_current_text(clock: Any, cast: Any) -> None:
    result = run("acknowledgements")
    assert result.status == PASS
    assert result.figure == (
        f"3 of 3 custodians hold a current acknowledgement of the responsibilities (version {responsibilities.VERSION})"
    )


def test_acknowledgements_fail_for_missing_expired_or_outdated_ones_and_warn_before_expiry(
    clock: Any, cast: Any
) -> None:
    now = clock.now()
    make_user("frank", {"custodian"}, acknowledged=False)
    grace = make_user("grace", {"custodian"}, acknowledged=False)
    Acknowledgement.objects.create(
        user=grace, text_version=responsibilities.VERSION, text_digest="x", acknowledged_at=now - dt.timedelta(days=400)
    )
    henry = make_user("henry", {"custodian"}, acknowledged=False)
    Acknowledgement.objects.create(user=henry, text_version="2020.1", text_digest="x", acknowledged_at=now)
    ivan = make_user("ivan", {"custodian"}, acknowledged=False)
    Acknowledgement.objects.create(
        user=ivan, text_version=responsibilities.VERSION, text_digest="x", acknowledged_at=now - dt.timedelta(days=350)
    )

    result = run("acknowledgements")

    assert result.status == FAIL
    assert result.figure.startswith("4 of 7 custodians hold a current acknowledgement")
    reasons = {o.label: (o.severity, o.reason) for o in result.offenders}
    assert reasons == {
        "frank": (FAIL, f"has not acknowledged version {responsibilities.VERSION} of the responsibilities"),
        "grace": (FAIL, "acknowledgement expired on 2026-10-30"),
        "henry": (FAIL, f"has not acknowledged version {responsibilities.VERSION} of the responsibilities"),
        "ivan": (WARN, "acknowledgement expires on 2026-12-19"),
    }


# --- Second factors -------------------------------------------------------------------------------


def test_mfa_passes_when_every_privileged_user_has_a_confirmed_device(cast: Any) -> None:
    result = run("mfa")
    assert result.status == PASS
    assert result.figure == "5 of 5 privileged users have a confirmed TOTP device; 1 of 1 auditors"


def test_mfa_fails_for_a_privileged_user_without_a_device_and_warns_for_an_auditor(cast: Any) -> None:
    make_user("frank", {"custodian", "key_admin"}, totp=False)
    make_user("ivy", {"auditor"}, totp=False)
    # A disabled account holds no role that counts.
    retired = make_user("old", {"custodian"}, totp=False)
    retired.is_active = False
    retired.save()

    result = run("mfa")

    assert result.status == FAIL
    assert result.figure == "5 of 6 privileged users have a confirmed TOTP device; 1 of 2 auditors"
    reasons = {o.label: (o.severity, o.reason) for o in result.offenders}
    assert reasons == {
        "frank": (FAIL, "custodian, key_admin without a confirmed TOTP device"),
        "ivy": (WARN, "auditor without a confirmed TOTP device (signs in with a password only)"),
    }


# --- Separation of duties -------------------------------------------------------------------------


def test_separation_of_duties_passes_for_the_cast(cast: Any) -> None:
    result = run("separation_of_duties")
    assert result.status == PASS
    assert result.figure == (
        "0 conflicting role holders among 7 users with roles; 0 self-approvals; 0 role grants outside dual control"
    )


def test_separation_of_duties_fails_for_conflicting_roles(cast: Any) -> None:
    make_user("eve", {"auditor", "custodian"})
    make_user("robot", {"api_client", "key_admin"})

    result = run("separation_of_duties")

    assert result.status == FAIL
    reasons = {o.label: o.reason for o in result.offenders}
    assert reasons == {
        "eve": "auditor who also holds custodian",
        "robot": "service account that also holds the human role(s) key_admin",
    }


def test_separation_of_duties_fails_for_a_decision_by_the_requester(clock: Any, cast: Any) -> None:
    req = approved_request("generate", requester=cast.alice, approvers=[cast.bob], required=1, now=clock.now())
    # The database refuses approver == the decision's copy of the requester; a copy that lies is caught here.
    Decision.objects.create(
        request=req,
        approver=cast.alice,
        requester=cast.carol,
        decision="approve",
        digest=req.digest,
        otp_device="x",
        approver_roles=["key_admin"],
        decided_at=clock.now(),
    )

    result = run("separation_of_duties")

    assert result.status == FAIL
    [offender] = [o for o in result.offenders if o.kind == "request"]
    assert offender.reason == "alice decided on their own request"


def test_role_grants_from_the_command_line_are_flagged_only_after_bootstrap(cast: Any) -> None:
    with acting(None, via="cli"):
        provision_user(username="first-custodian", roles={"custodian"}, password=None)
    assert run("separation_of_duties").status == PASS

    mark_dual_control_running()
    with acting(None, via="cli"):
        provision_user(username="late-admin", roles={"key_admin"}, password=None)
        # Re-provisioning with the same roles grants nothing.
        provision_user(username="first-custodian", roles={"custodian"}, password=None)
    record("user.roles_changed", details={"username": "sneaky", "before": [], "after": ["custodian"], "request": ""})

    result = run("separation_of_duties")

    assert result.status == WARN
    assert labels(result) == {"late-admin", "sneaky"}
    reasons = sorted(o.reason for o in result.offenders)
    assert reasons[0].startswith("granted key_admin from the command line (event #")
    assert reasons[1].startswith("roles changed without an approval request (event #")
    assert result.figure.endswith("2 role grants outside dual control")


def test_django_admin_accounts_are_a_warning(cast: Any) -> None:
    get_user_model().objects.create_user("root", is_staff=True, is_superuser=True)

    result = run("separation_of_duties")

    assert result.status == WARN
    [offender] = result.offenders
    assert offender.label == "root"
    assert "Django admin" in offender.reason
