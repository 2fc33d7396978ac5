"""Lifecycle steps on keys through the API: each opens a request (202) or, with no quorum, runs at once."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest

from approvals import registry
from approvals.models import ApprovalRequest
from lifecycle.models import Key, KeyGrant
from lifecycle.states import KeyState
from tests.api.conftest import API, assert_error, make_key, on_commit, run
from tests.conftest import api_client, approve

pytestmark = pytest.mark.django_db

UNKNOWN = "00000000-0000-4000-8000-000000000000"
OPERATIONS = [
    "activate",
    "rotate",
    "suspend",
    "resume",
    "deactivate",
    "compromise",
    "schedule-destruction",
    "cancel-destruction",
    "process-exception",
    "grant",
    "backup",
    "export",
    "restore",
]


def post(user: Any, key: Key | str, operation: str, body: Any = None, scopes: list[str] | None = None) -> Any:
    key_id = key.pk if isinstance(key, Key) else key
    client = api_client(user, scopes=scopes)
    return client.post(f"{API}/keys/{key_id}/{operation}/", body or {"justification": "ticket CHG-99"}, format="json")


def test_a_rotation_request_is_a_202_and_approving_it_rotates(cast: SimpleNamespace, aes_key: Key, clock: Any) -> None:
    response = post(cast.alice, aes_key, "rotate")
    assert response.status_code == 202
    body = response.json()
    assert body["operation"] == "rotate" and body["state"] == "pending"
    assert body["target"] == {"type": "key", "id": str(aes_key.pk), "label": "payments-dek"}
    assert body["parameters"] == {
        "key": "payments-dek",
        "state": "active",
        "primary_version": 1,
        "kcv": aes_key.primary_version.kcv,
    }
    assert "new version of key 'payments-dek'" in body["description"]
    with on_commit():
        approve(ApprovalRequest.objects.get(pk=body["id"]), cast.bob, clock=clock)
    aes_key.refresh_from_db()
    assert aes_key.primary_version.number == 2


@pytest.mark.parametrize(("operation", "state"), [("suspend", "suspended"), ("compromise", "compromised")])
def test_immediate_steps_answer_200_with_the_key_and_open_a_review(
    cast: SimpleNamespace, aes_key: Key, operation: str, state: str
) -> None:
    with on_commit():
        response = post(cast.bob, aes_key, operation)
    assert response.status_code == 200
    assert response.json()["id"] == str(aes_key.pk) and response.json()["state"] == state
    review = ApprovalRequest.objects.get(operation="review")
    assert review.state == "pending" and review.review_of.operation == operation


def test_resume_deactivate_and_destruction_requests_wait_for_approval(
    cast: SimpleNamespace, aes_key: Key, clock: Any
) -> None:
    run("suspend", aes_key, cast.alice, cast.approvers, clock)
    resume = post(cast.alice, aes_key, "resume")
    assert resume.status_code == 202 and resume.json()["quorum"]["approvals"] == 2
    deactivate = post(cast.alice, aes_key, "deactivate")
    assert deactivate.status_code == 202
    destroy = post(cast.alice, aes_key, "schedule-destruction")
    assert destroy.status_code == 202 and "waiting period of 30 day(s)" in destroy.json()["description"]
    assert ApprovalRequest.objects.filter(state="pending").count() == 4  # + the suspension's review


def test_cancelling_a_scheduled_destruction(cast: SimpleNamespace, aes_key: Key, clock: Any) -> None:
    assert_error(post(cast.alice, aes_key, "cancel-destruction"), 409, "not_scheduled")
    run("schedule_destruction", aes_key, cast.alice, cast.approvers, clock)
    response = post(cast.alice, aes_key, "cancel-destruction")
    assert response.status_code == 202
    with on_commit():
        approve(ApprovalRequest.objects.get(pk=response.json()["id"]), cast.bob, clock=clock)
    aes_key.refresh_from_db()
    assert aes_key.destroy_after is None


def test_a_step_the_state_does_not_allow_is_a_409(cast: SimpleNamespace, aes_key: Key) -> None:
    error = assert_error(post(cast.alice, aes_key, "activate"), 409, "state_conflict")
    assert "active" in error["message"]
    assert_error(post(cast.alice, aes_key, "resume"), 409, "state_conflict")


def test_a_second_pending_request_for_the_same_step_is_a_409(cast: SimpleNamespace, aes_key: Key) -> None:
    assert post(cast.alice, aes_key, "rotate").status_code == 202
    assert_error(post(cast.alice, aes_key, "rotate"), 409, "request_pending")


def test_activating_a_key_left_in_pre_activation(cast: SimpleNamespace, clock: Any) -> None:
    with on_commit():
        req = api_client(cast.alice).post(
            f"{API}/keys/",
            {
                "name": "later",
                "algorithm": "AES-128",
                "usage": "encrypt_decrypt",
                "justification": "j",
                "activate_at": None,
            },
            format="json",
        )
        approve(ApprovalRequest.objects.get(pk=req.json()["id"]), cast.bob, cast.carol, clock=clock)
    key = Key.objects.get(name="later")
    assert key.state == KeyState.PRE_ACTIVATION
    response = post(cast.alice, key, "activate")
    assert response.status_code == 202
    with on_commit():
        approve(ApprovalRequest.objects.get(pk=response.json()["id"]), cast.bob, clock=clock)
    key.refresh_from_db()
    assert key.state == KeyState.ACTIVE


def test_a_grant_request(cast: SimpleNamespace, aes_key: Key, clock: Any) -> None:
    response = post(
        cast.olivia,
        aes_key,
        "grant",
        {"justification": "billing service", "grantee": "svc", "operations": ["encrypt", "decrypt"]},
    )
    assert response.status_code == 202
    assert response.json()["parameters"]["operations"] == ["decrypt", "encrypt"]
    with on_commit():
        approve(ApprovalRequest.objects.get(pk=response.json()["id"]), cast.bob, clock=clock)
    assert KeyGrant.objects.get(key=aes_key, revoked_at__isnull=True).operations == ["decrypt", "encrypt"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"grantee": "bob", "operations": ["encrypt"]}, "grantee"),  # not a service account
        ({"grantee": "nobody", "operations": ["encrypt"]}, "grantee"),
        ({"grantee": "svc", "operations": ["sign"]}, "operations"),  # does not fit an AES key
        ({"grantee": "svc", "operations": ["fly"]}, "operations"),
        ({"grantee": "svc", "operations": "encrypt"}, "operations"),
        ({"grantee": "svc"}, "operations"),
    ],
)
def test_malformed_grants_are_400s(cast: SimpleNamespace, aes_key: Key, body: dict[str, Any], field: str) -> None:
    error = assert_error(post(cast.alice, aes_key, "grant", {"justification": "j", **body}), 400)
    assert field in error["details"] or field in error["message"]


def test_a_processing_exception_for_a_compromised_key(cast: SimpleNamespace, aes_key: Key, clock: Any) -> None:
    run("compromise", aes_key, cast.alice, cast.approvers, clock)
    until = (clock.now() + dt.timedelta(days=7)).isoformat()
    response = post(cast.alice, aes_key, "process-exception", {"justification": "read old records", "until": until})
    assert response.status_code == 202
    assert response.json()["parameters"]["until"] == until
    assert_error(post(cast.alice, aes_key, "process-exception", {"justification": "j", "until": until}), 409)
    too_far = (clock.now() + dt.timedelta(days=31)).isoformat()
    assert (
        "until"
        in assert_error(post(cast.alice, aes_key, "process-exception", {"justification": "j", "until": too_far}), 400)[
            "details"
        ]
    )
    assert (
        "until" in assert_error(post(cast.alice, aes_key, "process-exception", {"justification": "j"}), 400)["details"]
    )


def test_operations_not_registered_on_this_installation_answer_a_clean_400(
    cast: SimpleNamespace, aes_key: Key, monkeypatch: Any
) -> None:
    for operation in ("backup", "export", "restore"):
        monkeypatch.delitem(registry._actions, operation, raising=False)
        assert_error(post(cast.alice, aes_key, operation), 400, "operation_unavailable")


def test_registered_extra_operations_take_their_parameters_from_the_body(
    cast: SimpleNamespace, aes_key: Key, monkeypatch: Any
) -> None:
    """backup/export/restore belong to another module: the API passes their parameters on as sent."""
    seen: dict[str, Any] = {}

    def prepare(requester: Any, target_id: str, parameters: dict[str, Any]) -> registry.Prepared:
        seen.update(parameters)
        return registry.Prepared(
            target_type="key",
            target_id=target_id,
            target_label="payments-dek",
            parameters=parameters,
            quorum=registry.QuorumRule(2, ("custodian",), 72, 24),
        )

    action = registry.Action(
        "export", "Export", frozenset({"key_admin"}), prepare, lambda r: registry.Outcome(), lambda r: "export"
    )
    monkeypatch.setitem(registry._actions, "export", action)
    response = post(
        cast.alice, aes_key, "export", {"justification": "to the partner", "recipient": "acme", "format": "jwk"}
    )
    assert response.status_code == 202
    assert seen == {"recipient": "acme", "format": "jwk"}
    # PostgreSQL stores no NUL character: refused before it gets there.
    ApprovalRequest.objects.filter(operation="export").update(state="cancelled")
    nul = post(cast.alice, aes_key, "export", {"justification": "j", "recipient": {"name": ["a\x00b"]}})
    assert_error(nul, 400, "invalid")


def test_names_with_control_characters_name_nothing(cast: SimpleNamespace, kms: Any) -> None:
    olivia = api_client(cast.olivia)
    assert_error(olivia.get(f"{API}/policies/a%00b/"), 404, "not_found")
    body = {"roles": ["custodian"], "justification": "j"}
    assert_error(olivia.post(f"{API}/custodians/a%00b/roles/", body, format="json"), 404, "not_found")
    assert_error(olivia.get(f"{API}/keys/?q=a%00b"), 400, "invalid")
    assert_error(olivia.get(f"{API}/requests/?requester=a%00b"), 400, "invalid")


@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_operation_refuses_an_unknown_or_malformed_key_id(
    cast: SimpleNamespace, kms: Any, operation: str
) -> None:
    assert_error(post(cast.alice, UNKNOWN, operation), 404, "not_found")
    assert_error(post(cast.alice, "not-a-uuid", operation), 404, "not_found")


@pytest.mark.parametrize("operation", ["rotate", "deactivate", "schedule-destruction", "suspend"])
def test_auditors_and_outsiders_cannot_request_steps(cast: SimpleNamespace, aes_key: Key, operation: str) -> None:
    assert_error(post(cast.erin, aes_key, operation), 403, "role_required")
    assert_error(post(cast.mallory, aes_key, operation), 403, "role_required")
    aes_key.refresh_from_db()
    assert aes_key.state == KeyState.ACTIVE


def test_a_custodian_may_suspend_but_not_rotate(cast: SimpleNamespace, aes_key: Key) -> None:
    assert_error(post(cast.bob, aes_key, "rotate"), 403, "role_required")


def test_a_service_account_cannot_request_steps_even_on_a_granted_key(
    cast: SimpleNamespace, aes_key: Key, clock: Any
) -> None:
    from tests.api.conftest import grant

    assert_error(post(cast.svc, aes_key, "rotate"), 404, "not_found")  # it cannot even see the key
    grant(aes_key, cast.svc, ["encrypt"], cast.alice, cast.approvers, clock)
    assert_error(post(cast.svc, aes_key, "rotate"), 403, "role_required")


def test_requesting_steps_needs_the_request_scope_and_credentials(
    cast: SimpleNamespace, aes_key: Key, client: Any
) -> None:
    assert_error(post(cast.alice, aes_key, "rotate", scopes=["read", "approve"]), 403, "scope_required")
    response = client.post(f"{API}/keys/{aes_key.pk}/rotate/", {"justification": "j"}, content_type="application/json")
    assert_error(response, 401)


@pytest.mark.parametrize("body", [{}, {"justification": ""}, {"justification": 5 * "x" * 500}, ["justification"]])
def test_a_step_without_a_proper_justification_is_a_400(cast: SimpleNamespace, aes_key: Key, body: Any) -> None:
    response = api_client(cast.alice).post(f"{API}/keys/{aes_key.pk}/rotate/", body, format="json")
    assert_error(response, 400)
    assert not ApprovalRequest.objects.filter(operation="rotate").exists()


def test_a_step_that_fails_at_once_is_a_409_naming_the_request(
    cast: SimpleNamespace, clock: Any, monkeypatch: Any
) -> None:
    """A quorum-0 step whose execution is refused (the key changed under it) fails the request."""
    key = make_key(cast.alice, cast.approvers, clock, name="racy")
    from lifecycle import actions

    def refuse(key: Any, **kwargs: Any) -> Any:
        from kms_console.lib.errors import Conflict

        raise Conflict("the key changed meanwhile")

    action = registry.get("suspend")
    monkeypatch.setitem(
        registry._actions,
        "suspend",
        registry.Action(
            action.operation,
            action.title,
            action.requester_roles,
            action.prepare,
            actions._simple_execute(refuse),
            action.describe,
            action.after_executed,
        ),
    )
    with on_commit():
        response = post(cast.alice, key, "suspend")
    error = assert_error(response, 409, "execution_failed")
    assert "the key changed meanwhile" in error["message"]
    assert ApprovalRequest.objects.get(pk=error["details"]["request"]).state == "failed"
