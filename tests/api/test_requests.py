"""The requests API: reading requests, and approving through it under every dual-control rule.

Each refusal leaves the request's state and decisions as they were.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import Group

from accounts.models import Acknowledgement
from approvals.models import ApprovalRequest, Decision
from approvals.services import open_request
from audit.models import AuditEvent
from lifecycle.models import Hsm, Job, Key
from tests.api.conftest import API, assert_error, make_key, on_commit
from tests.conftest import api_client, fresh_otp, make_user, otp_code

pytestmark = pytest.mark.django_db


@pytest.fixture
def generate(cast: SimpleNamespace, clock: Any) -> ApprovalRequest:
    """alice asks for a new key; it needs two custodians."""
    return open_request(
        operation="generate",
        requester=cast.alice,
        justification="tokenisation key for the card vault",
        parameters={"name": "vault-key", "algorithm": "AES-256", "usage": "encrypt_decrypt"},
    )


def approve_via_api(user: Any, req: ApprovalRequest, clock: Any, **overrides: Any) -> Any:
    body = {"digest": req.digest, "otp": fresh_otp(user, clock), **overrides}
    return api_client(user, scopes=["approve"]).post(f"{API}/requests/{req.pk}/approve/", body, format="json")


def unchanged(req: ApprovalRequest, decisions: int = 0, state: str = "pending") -> None:
    req.refresh_from_db()
    assert req.state == state
    assert req.decisions.count() == decisions


# --- reading --------------------------------------------------------------------------------------


def test_it_shows_what_a_request_binds(cast: SimpleNamespace, generate: ApprovalRequest) -> None:
    response = api_client(cast.bob, scopes=["read"]).get(f"{API}/requests/{generate.pk}/")
    assert response.status_code == 200
    body = response.json()
    assert body["operation"] == "generate"
    assert body["target"] == {"type": "key", "id": "", "label": "vault-key"}
    assert body["parameters"]["name"] == "vault-key" and body["parameters"]["policy"] == "standard"
    assert body["digest"] == generate.digest and len(body["digest"]) == 64
    assert body["justification"] == "tokenisation key for the card vault"
    assert body["requester"] == "alice"
    assert body["quorum"]["approvals"] == 2 and body["quorum"]["approver_roles"] == ["custodian"]
    assert body["state"] == "pending"
    assert body["approvals"] == [] and body["approvals_received"] == 0 and body["rejection"] is None
    assert "Generate a new AES-256 key named 'vault-key'" in body["description"]


def test_it_lists_requests_with_filters_and_the_inbox(
    cast: SimpleNamespace, generate: ApprovalRequest, clock: Any
) -> None:
    bob = api_client(cast.bob)
    assert [r["id"] for r in bob.get(f"{API}/requests/?state=pending").json()["results"]] == [str(generate.pk)]
    assert bob.get(f"{API}/requests/?state=executed").json()["count"] == 0
    assert bob.get(f"{API}/requests/?operation=generate&requester=alice").json()["count"] == 1
    assert bob.get(f"{API}/requests/?waiting_for=me").json()["count"] == 1
    # The requester and an auditor are not waited for.
    assert api_client(cast.alice).get(f"{API}/requests/?waiting_for=me").json()["count"] == 0
    assert api_client(cast.erin).get(f"{API}/requests/?waiting_for=me").json()["count"] == 0
    # Once bob decided, it no longer waits for him.
    assert approve_via_api(cast.bob, generate, clock).status_code == 200
    assert bob.get(f"{API}/requests/?waiting_for=me").json()["count"] == 0
    assert_error(bob.get(f"{API}/requests/?waiting_for=you"), 400, "invalid")
    assert_error(bob.get(f"{API}/requests/?state=nonsense"), 400, "invalid")


def test_the_request_list_runs_a_fixed_number_of_queries(
    cast: SimpleNamespace, clock: Any, django_assert_num_queries: Any
) -> None:
    client = api_client(cast.bob)
    client.get(f"{API}/requests/")  # warm-up: last-used stamp

    def open_one(name: str) -> None:
        open_request(
            operation="generate",
            requester=cast.alice,
            justification="j",
            parameters={"name": name, "algorithm": "AES-128", "usage": "encrypt_decrypt"},
        )

    open_one("a1")
    # token, roles, count, page, decisions (prefetch)
    with django_assert_num_queries(5):
        assert client.get(f"{API}/requests/").json()["count"] == 1
    for index in range(6):
        open_one(f"b{index}")
    with django_assert_num_queries(5):
        assert client.get(f"{API}/requests/").json()["count"] == 7


def test_reading_requests_needs_a_human_role_and_the_read_scope(
    cast: SimpleNamespace, generate: ApprovalRequest, client: Any
) -> None:
    assert api_client(cast.erin).get(f"{API}/requests/{generate.pk}/").status_code == 200
    assert_error(api_client(cast.svc).get(f"{API}/requests/"), 403, "role_required")
    assert_error(api_client(cast.mallory).get(f"{API}/requests/"), 403, "role_required")
    assert_error(api_client(cast.bob, scopes=["approve"]).get(f"{API}/requests/"), 403, "scope_required")
    assert_error(client.get(f"{API}/requests/"), 401, "not_authenticated")


@pytest.mark.parametrize("request_id", ["00000000-0000-4000-8000-000000000000", "nope", "12"])
def test_an_unknown_request_is_a_404_everywhere(cast: SimpleNamespace, clock: Any, request_id: str) -> None:
    bob = api_client(cast.bob)
    assert_error(bob.get(f"{API}/requests/{request_id}/"), 404, "not_found")
    body = {"digest": "0" * 64, "otp": otp_code(cast.bob), "comment": "no"}
    for verb in ("approve", "reject", "cancel", "retry"):
        assert_error(bob.post(f"{API}/requests/{request_id}/{verb}/", body, format="json"), 404, "not_found")


# --- approving ------------------------------------------------------------------------------------


def test_two_custodians_approve_through_the_api_and_the_key_is_made(
    cast: SimpleNamespace, generate: ApprovalRequest, clock: Any
) -> None:
    first = approve_via_api(cast.bob, generate, clock, comment="checked the ticket")
    assert first.status_code == 200
    assert first.json()["approvals_received"] == 1 and first.json()["state"] == "pending"
    assert first.json()["approvals"][0]["approver"] == "bob"
    assert first.json()["approvals"][0]["comment"] == "checked the ticket"
    with on_commit():
        second = approve_via_api(cast.carol, generate, clock)
    assert second.status_code == 200
    assert second.json()["state"] in {"executing", "executed"}
    generate.refresh_from_db()
    assert generate.state == "executed"
    key = Key.objects.get(name="vault-key")
    assert key.state == "active" and generate.result["key_id"] == str(key.pk)


def test_a_requester_never_approves_their_own_request(cast: SimpleNamespace, clock: Any) -> None:
    key = make_key(cast.alice, cast.approvers, clock)
    # bob (a custodian) suspends at once; the review it opens is his own request.
    with on_commit():
        response = api_client(cast.bob).post(f"{API}/keys/{key.pk}/suspend/", {"justification": "odd"}, format="json")
    assert response.status_code == 200
    review = ApprovalRequest.objects.get(operation="review")
    assert review.requester == cast.bob
    assert_error(approve_via_api(cast.bob, review, clock), 403, "self_approval")
    unchanged(review)


def test_the_requester_is_refused_before_anything_else(
    cast: SimpleNamespace, generate: ApprovalRequest, clock: Any
) -> None:
    assert_error(approve_via_api(cast.alice, generate, clock), 403, "self_approval")
    unchanged(generate)


def test_a_wrong_digest_is_refused(cast: SimpleNamespace, generate: ApprovalRequest, clock: Any) -> None:
    assert_error(approve_via_api(cast.bob, generate, clock, digest="ab" * 32), 409, "digest_mismatch")
    unchanged(generate)


@pytest.mark.parametrize("otp", ["000000", "12345", "abcdef", "", " "])
def test_a_bad_one_time_password_is_refused(
    cast: SimpleNamespace, generate: ApprovalRequest, clock: Any, otp: str
) -> None:
    response = approve_via_api(cast.bob, generate, clock, otp=otp)
    assert response.status_code in {400, 403}
    assert_error(response, response.status_code)
    unchanged(generate)


def test_a_missing_otp_is_a_400(cast: SimpleNamespace, generate: ApprovalRequest) -> None:
    client = api_client(cast.bob)
    error = assert_error(
        client.post(f"{API}/requests/{generate.pk}/approve/", {"digest": generate.digest}, format="json"), 400
    )
    assert "otp" in error["details"]
    unchanged(generate)


def test_a_replayed_code_is_refused(cast: SimpleNamespace, generate: ApprovalRequest, clock: Any) -> None:
    other = open_request(
        operation="generate",
        requester=cast.alice,
        justification="second",
        parameters={"name": "other-key", "algorithm": "AES-256", "usage": "encrypt_decrypt"},
    )
    code = fresh_otp(cast.bob, clock)
    client = api_client(cast.bob)
    assert (
        client.post(
            f"{API}/requests/{generate.pk}/approve/", {"digest": generate.digest, "otp": code}, format="json"
        ).status_code
        == 200
    )
    replay = client.post(f"{API}/requests/{other.pk}/approve/", {"digest": other.digest, "otp": code}, format="json")
    assert_error(replay, 403, "otp_invalid")
    unchanged(other)
    assert AuditEvent.objects.filter(action="otp.failed", actor="bob").exists()


def test_one_decision_per_person(cast: SimpleNamespace, generate: ApprovalRequest, clock: Any) -> None:
    assert approve_via_api(cast.bob, generate, clock).status_code == 200
    assert_error(approve_via_api(cast.bob, generate, clock), 409, "already_decided")
    unchanged(generate, decisions=1)


@pytest.mark.parametrize("who", ["erin", "svc", "olivia", "alice_other"])
def test_auditors_service_accounts_and_other_roles_do_not_approve(
    cast: SimpleNamespace, generate: ApprovalRequest, clock: Any, who: str
) -> None:
    if who == "svc":
        client = api_client(cast.svc, scopes=["approve"])
        response = client.post(
            f"{API}/requests/{generate.pk}/approve/", {"digest": generate.digest, "otp": "123456"}, format="json"
        )
    elif who == "alice_other":
        response = approve_via_api(make_user("kate", {"key_admin"}), generate, clock)
    else:
        response = approve_via_api(getattr(cast, who), generate, clock)
    assert_error(response, 403, "not_eligible")
    unchanged(generate)


def test_an_outsider_is_refused(cast: SimpleNamespace, generate: ApprovalRequest, clock: Any) -> None:
    assert_error(approve_via_api(cast.mallory, generate, clock), 403, "role_required")
    unchanged(generate)


def test_a_custodian_without_a_current_acknowledgement_does_not_approve(
    cast: SimpleNamespace, generate: ApprovalRequest, clock: Any
) -> None:
    newcomer = make_user("nora", {"custodian"}, acknowledged=False)
    assert_error(approve_via_api(newcomer, generate, clock), 403, "not_eligible")
    unchanged(generate)
    assert not Acknowledgement.objects.filter(user=newcomer).exists()


def test_approving_needs_the_approve_scope(cast: SimpleNamespace, generate: ApprovalRequest, clock: Any) -> None:
    client = api_client(cast.bob, scopes=["read", "request"])
    body = {"digest": generate.digest, "otp": fresh_otp(cast.bob, clock)}
    assert_error(client.post(f"{API}/requests/{generate.pk}/approve/", body, format="json"), 403, "scope_required")
    unchanged(generate)


def test_an_expired_request_takes_no_approval(cast: SimpleNamespace, generate: ApprovalRequest, clock: Any) -> None:
    clock.advance(hours=73)
    assert_error(approve_via_api(cast.bob, generate, clock), 409, "request_expired")
    unchanged(generate, state="expired")


def test_an_executed_request_takes_no_more_decisions(
    cast: SimpleNamespace, generate: ApprovalRequest, clock: Any
) -> None:
    approve_via_api(cast.bob, generate, clock)
    with on_commit():
        approve_via_api(cast.carol, generate, clock)
    assert_error(approve_via_api(cast.dave, generate, clock), 409, "request_executed")
    unchanged(generate, decisions=2, state="executed")


@pytest.mark.parametrize("body", [[], "x", {"digest": ["a"], "otp": "123456"}, {"digest": "a" * 500, "otp": "1"}])
def test_malformed_approvals_are_400s(cast: SimpleNamespace, generate: ApprovalRequest, body: Any) -> None:
    response = api_client(cast.bob).post(f"{API}/requests/{generate.pk}/approve/", body, format="json")
    assert_error(response, 400)
    unchanged(generate)


def test_anonymous_callers_cannot_approve(client: Any, generate: ApprovalRequest) -> None:
    response = client.post(f"{API}/requests/{generate.pk}/approve/", {}, content_type="application/json")
    assert_error(response, 401)


# --- rejecting, cancelling, retrying --------------------------------------------------------------


def test_a_rejection_needs_a_reason_and_rejects_the_request(
    cast: SimpleNamespace, generate: ApprovalRequest, clock: Any
) -> None:
    client = api_client(cast.bob)
    no_reason = client.post(f"{API}/requests/{generate.pk}/reject/", {"otp": fresh_otp(cast.bob, clock)}, format="json")
    assert "comment" in assert_error(no_reason, 400)["details"]
    unchanged(generate)
    response = client.post(
        f"{API}/requests/{generate.pk}/reject/",
        {"otp": fresh_otp(cast.bob, clock), "comment": "no ticket for this"},
        format="json",
    )
    assert response.status_code == 200
    assert response.json()["state"] == "rejected"
    assert response.json()["rejection"]["approver"] == "bob"
    assert response.json()["rejection"]["comment"] == "no ticket for this"
    assert Decision.objects.get(request=generate).decision == "reject"


def test_only_the_requester_cancels_a_pending_request(
    cast: SimpleNamespace, generate: ApprovalRequest, clock: Any
) -> None:
    assert_error(api_client(cast.bob).post(f"{API}/requests/{generate.pk}/cancel/"), 403, "not_requester")
    assert_error(
        api_client(cast.alice, scopes=["read"]).post(f"{API}/requests/{generate.pk}/cancel/"), 403, "scope_required"
    )
    response = api_client(cast.alice).post(f"{API}/requests/{generate.pk}/cancel/")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert_error(api_client(cast.alice).post(f"{API}/requests/{generate.pk}/cancel/"), 409, "request_cancelled")
    assert_error(approve_via_api(cast.bob, generate, clock), 409, "request_cancelled")


def test_a_custodian_retries_a_failed_execution(cast: SimpleNamespace, clock: Any, monkeypatch: Any, kms: Any) -> None:
    """The HSM's PIN was missing when the job ran; once it is there, a retry runs the same job."""
    second = Hsm.objects.create(
        name="second",
        module=kms.hsm.module,
        token_label=kms.token.other_label,
        pin_env="KMS_TEST_LATE_PIN",
        registered_at=clock.now(),
    )
    monkeypatch.delenv("KMS_TEST_LATE_PIN", raising=False)
    # An earlier test may have logged this process in to that token already; start from no session
    # so the job really has to read the PIN.
    second.backend().reset()
    req = open_request(
        operation="generate",
        requester=cast.alice,
        justification="a key on the second HSM",
        parameters={"name": "far-key", "algorithm": "AES-256", "usage": "encrypt_decrypt", "hsm": "second"},
    )
    with on_commit():
        approve_via_api(cast.bob, req, clock)
        approve_via_api(cast.carol, req, clock)
    req.refresh_from_db()
    assert req.state == "failed" and "PIN" in req.error
    assert kms.token.other_pin not in req.error

    assert_error(api_client(cast.alice).post(f"{API}/requests/{req.pk}/retry/"), 403, "role_required")
    assert_error(
        api_client(cast.bob, scopes=["read", "request"]).post(f"{API}/requests/{req.pk}/retry/"), 403, "scope_required"
    )
    monkeypatch.setenv("KMS_TEST_LATE_PIN", kms.token.other_pin)
    with on_commit():
        response = api_client(cast.dave).post(f"{API}/requests/{req.pk}/retry/")
    assert response.status_code == 200
    req.refresh_from_db()
    assert req.state == "executed" and req.execution_count == 2
    assert Job.objects.filter(request=req).count() == 1  # the same job, never a second one
    assert Key.objects.get(name="far-key").state == "active"
    assert_error(api_client(cast.dave).post(f"{API}/requests/{req.pk}/retry/"), 409, "request_executed")


def test_retry_is_for_custodians_only(cast: SimpleNamespace, generate: ApprovalRequest) -> None:
    assert_error(api_client(cast.erin).post(f"{API}/requests/{generate.pk}/retry/"), 403, "role_required")
    assert_error(api_client(cast.bob).post(f"{API}/requests/{generate.pk}/retry/"), 409, "request_pending")


def test_role_groups_exist_for_the_cast(cast: SimpleNamespace) -> None:
    # A guard for the tests above: the cast really holds the roles they rely on.
    assert set(Group.objects.values_list("name", flat=True)) >= {"custodian", "key_admin", "auditor", "api_client"}
