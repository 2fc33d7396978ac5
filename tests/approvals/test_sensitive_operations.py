"""Role changes and HSM registrations go through the engine like key operations (quorum 2 under
`standard`), and nobody decides on a change of their own account."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core import mail

from accounts.services import roles_of
from approvals.models import RequestState
from approvals.selectors import requests_waiting_for
from approvals.services import open_request
from audit.models import AuditEvent
from kms_console.lib.errors import ApplicationError, Forbidden
from lifecycle.models import Hsm
from tests.approvals.helpers import attempt, refused
from tests.conftest import approve, make_user
from tests.lifecycle.helpers import on_commit

pytestmark = pytest.mark.django_db


def role_change(olivia: Any, username: str, roles: list[str]) -> Any:
    return open_request(
        operation="custodian_change",
        requester=olivia,
        justification="staffing change",
        parameters={"username": username, "roles": roles},
    )


def test_a_role_change_takes_effect_only_after_two_custodians_approve(
    olivia: Any, mallory: Any, bob: Any, carol: Any, clock: Any
) -> None:
    req = role_change(olivia, "mallory", ["custodian"])
    assert (req.required_approvals, req.approver_roles) == (2, ["custodian"])
    approve(req, bob, clock=clock)
    assert roles_of(type(mallory).objects.get(pk=mallory.pk)) == set()
    req = approve(req, carol, clock=clock)
    assert req.state == RequestState.EXECUTED
    assert roles_of(type(mallory).objects.get(pk=mallory.pk)) == {"custodian"}
    event = AuditEvent.objects.get(action="user.roles_changed")
    assert (event.details["before"], event.details["after"], event.details["request"]) == (
        [],
        ["custodian"],
        str(req.pk),
    )


def test_nobody_decides_on_a_change_of_their_own_roles(
    olivia: Any, bob: Any, carol: Any, dave: Any, clock: Any
) -> None:
    with on_commit():
        req = role_change(olivia, "bob", ["custodian", "key_admin"])
    assert "bob@example.test" not in [address for message in mail.outbox for address in message.to]
    assert req not in requests_waiting_for(bob)
    assert req in requests_waiting_for(carol)
    with refused(req, Forbidden, "own_account"):
        attempt(req, bob, clock)
    with refused(req, Forbidden, "own_account"):
        attempt(req, bob, clock, decision="reject", comment="I object")
    req = approve(req, carol, dave, clock=clock)
    assert req.state == RequestState.EXECUTED


def test_nobody_requests_a_change_of_their_own_roles_and_bad_role_sets_are_refused(olivia: Any, bob: Any) -> None:
    with pytest.raises(ApplicationError, match="your own roles"):
        role_change(olivia, "olivia", ["security_officer", "custodian"])
    with pytest.raises(ApplicationError, match="auditor role cannot be combined"):
        role_change(olivia, "bob", ["auditor", "custodian"])
    with pytest.raises(Forbidden):
        role_change(bob, "olivia", ["custodian"])  # only security officers request role changes


def test_an_hsm_registration_runs_only_after_approval_and_never_takes_a_pin(
    olivia: Any, bob: Any, carol: Any, clock: Any, kms: Any, monkeypatch: Any
) -> None:
    # A token label SoftHSM does not know: the registration's probe fails without logging in to any
    # token (a login would stay for the whole test process and mask other tests' PIN checks).
    monkeypatch.setenv("KMS_TEST_THIRD_PIN", "31415926")
    with pytest.raises(ApplicationError, match="PINs are never sent"):
        open_request(
            operation="hsm_change",
            requester=olivia,
            justification="third HSM",
            parameters={"name": "third", "module": kms.hsm.module, "token_label": "kms-test-third", "pin": "1234"},
        )
    req = open_request(
        operation="hsm_change",
        requester=olivia,
        justification="third HSM",
        parameters={
            "name": "third",
            "module": kms.hsm.module,
            "token_label": "kms-test-third",
            "pin_env": "KMS_TEST_THIRD_PIN",
        },
    )
    assert req.required_approvals == 2
    approve(req, bob, clock=clock)
    assert not Hsm.objects.filter(name="third").exists()
    req = approve(req, carol, clock=clock)
    # Approved and executed: the probe of the token failed, readably, and nothing was registered.
    assert req.state == RequestState.FAILED
    assert "could not be reached" in req.error
    assert not Hsm.objects.filter(name="third").exists()
    stored = json.dumps([req.parameters, list(AuditEvent.objects.values_list("details", flat=True))], default=str)
    assert "31415926" not in stored
    assert "KMS_TEST_THIRD_PIN" in stored  # where the PIN comes from is recorded, the PIN never


def test_a_service_account_or_an_auditor_is_never_made_an_approver(olivia: Any, svc: Any, erin: Any) -> None:
    make_user("frank", {"key_admin"})
    with pytest.raises(ApplicationError, match="service account"):
        role_change(olivia, "svc", ["api_client", "custodian"])
    with pytest.raises(ApplicationError, match="auditor role cannot be combined"):
        role_change(olivia, "erin", ["auditor", "custodian"])
