"""The keys API: listing and showing keys, versions and timelines; requesting new keys."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from approvals.models import ApprovalRequest
from audit.models import AuditEvent
from lifecycle.hsm import default_backend
from lifecycle.models import Key
from lifecycle.states import KeyState
from tests.api.conftest import API, assert_error, grant, lenient_policy, make_key, on_commit
from tests.conftest import api_client

pytestmark = pytest.mark.django_db

UNKNOWN = "00000000-0000-4000-8000-000000000000"


# --- list -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["alice", "bob", "olivia", "erin"])
def test_humans_with_a_role_list_every_key(cast: SimpleNamespace, aes_key: Key, who: str) -> None:
    response = api_client(getattr(cast, who), scopes=["read"]).get(f"{API}/keys/")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1 and body["next"] is None
    row = body["results"][0]
    assert row["id"] == str(aes_key.pk)
    assert row["name"] == "payments-dek"
    assert (row["algorithm"], row["usage"], row["state"]) == ("AES-256", "encrypt_decrypt", "active")
    assert (row["policy"], row["hsm"], row["owner"], row["primary_version"]) == ("standard", "default", "alice", 1)


def test_a_service_account_lists_only_the_keys_granted_to_it(cast: SimpleNamespace, aes_key: Key, clock: Any) -> None:
    other = make_key(cast.alice, cast.approvers, clock, name="not-for-svc")
    client = api_client(cast.svc, scopes=["read"])
    assert client.get(f"{API}/keys/").json()["count"] == 0
    grant(aes_key, cast.svc, ["encrypt"], cast.alice, cast.approvers, clock)
    assert [k["name"] for k in client.get(f"{API}/keys/").json()["results"]] == ["payments-dek"]
    assert client.get(f"{API}/keys/{aes_key.pk}/").status_code == 200
    assert client.get(f"{API}/keys/{aes_key.pk}/versions/").status_code == 200
    assert_error(client.get(f"{API}/keys/{other.pk}/"), 404, "not_found")
    assert_error(client.get(f"{API}/keys/{aes_key.pk}/timeline/"), 403, "role_required")


def test_reading_keys_needs_a_role_the_read_scope_and_credentials(
    cast: SimpleNamespace, aes_key: Key, client: Any
) -> None:
    assert_error(api_client(cast.mallory).get(f"{API}/keys/"), 403, "role_required")
    assert_error(api_client(cast.mallory).get(f"{API}/keys/{aes_key.pk}/"), 403, "role_required")
    assert_error(api_client(cast.alice, scopes=["use"]).get(f"{API}/keys/"), 403, "scope_required")
    response = client.get(f"{API}/keys/")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"


def test_the_key_list_filters_like_the_console(cast: SimpleNamespace, clock: Any) -> None:
    make_key(cast.alice, cast.approvers, clock, name="dek-eu")
    make_key(cast.alice, cast.approvers, clock, name="mac-eu", algorithm="HMAC-SHA256", usage="mac")
    Key.objects.filter(name="dek-eu").update(tags=["eu", "pci"], description="cardholder data")
    client = api_client(cast.erin)

    def names(query: str) -> list[str]:
        response = client.get(f"{API}/keys/?{query}")
        assert response.status_code == 200, response.json()
        return [k["name"] for k in response.json()["results"]]

    assert names("algorithm=HMAC-SHA256") == ["mac-eu"]
    assert names("usage=encrypt_decrypt") == ["dek-eu"]
    assert names("tag=pci") == ["dek-eu"]
    assert names("q=cardholder") == ["dek-eu"]
    assert names("state=active") == ["dek-eu", "mac-eu"]
    assert names("state=destroyed") == []
    assert names("policy=standard&page_size=1") == ["dek-eu"]
    assert_error(client.get(f"{API}/keys/?state=melted"), 400, "invalid")
    assert_error(client.get(f"{API}/keys/?algorithm=DES"), 400, "invalid")
    assert_error(client.get(f"{API}/keys/?page=99"), 404, "not_found")


def test_the_key_list_query_count_does_not_grow_with_the_number_of_keys(
    cast: SimpleNamespace, clock: Any, django_assert_num_queries: Any
) -> None:
    client = api_client(cast.erin)
    make_key(cast.alice, cast.approvers, clock, name="k-0")
    client.get(f"{API}/keys/")  # warm-up: last-used stamp
    # token, roles, count, page (with policy, hsm, owner and primary version joined)
    with django_assert_num_queries(4):
        assert client.get(f"{API}/keys/").json()["count"] == 1
    for index in range(1, 6):
        make_key(cast.alice, cast.approvers, clock, name=f"k-{index}")
    client.get(f"{API}/keys/")  # the clock moved on with the approvals: stamp last-used again
    with django_assert_num_queries(4):
        assert client.get(f"{API}/keys/").json()["count"] == 6


# --- detail, versions, timeline -------------------------------------------------------------------


def test_a_key_shows_its_versions_with_kcv_and_cka_id(cast: SimpleNamespace, aes_key: Key) -> None:
    body = api_client(cast.erin).get(f"{API}/keys/{aes_key.pk}/").json()
    version = aes_key.versions.get()
    assert body["destruction_certificate"] is None
    assert body["grants"] == []
    [shown] = body["versions"]
    assert shown["number"] == 1 and shown["state"] == "active" and shown["is_primary"] is True
    assert shown["kcv"] == version.kcv and len(shown["kcv"]) == 6
    assert shown["hsm_object_id"] == version.cka_id
    assert shown["public_key_pem"] is None
    assert shown["originator_until"] and shown["recipient_until"] and shown["created_at"]
    # The CKA_ID is really the object's id on the token, and the KCV is what the token computes.
    assert default_backend().exists(bytes.fromhex(shown["hsm_object_id"]))
    assert default_backend().key_check_value(bytes.fromhex(shown["hsm_object_id"]), "AES-256") == shown["kcv"]


def test_an_asymmetric_version_shows_its_public_key(cast: SimpleNamespace, clock: Any) -> None:
    key = make_key(cast.alice, cast.approvers, clock, name="ec", algorithm="EC-P256", usage="sign_verify")
    response = api_client(cast.erin).get(f"{API}/keys/{key.pk}/versions/")
    assert response.status_code == 200
    [version] = response.json()["results"]
    public = serialization.load_pem_public_key(version["public_key_pem"].encode())
    assert public.curve.name == "secp256r1"
    assert version["kcv"]


def test_versions_list_every_version_in_order(cast: SimpleNamespace, aes_key: Key, clock: Any) -> None:
    from tests.api.conftest import run

    run("rotate", aes_key, cast.alice, cast.approvers, clock)
    versions = api_client(cast.bob).get(f"{API}/keys/{aes_key.pk}/versions/").json()["results"]
    assert [(v["number"], v["state"], v["is_primary"]) for v in versions] == [
        (1, "deactivated", False),
        (2, "active", True),
    ]
    assert versions[0]["deactivated_at"] is not None
    assert versions[0]["hsm_object_id"] != versions[1]["hsm_object_id"]


def test_the_timeline_names_the_request_and_approvers_behind_each_state(
    cast: SimpleNamespace, aes_key: Key, django_assert_num_queries: Any
) -> None:
    client = api_client(cast.erin)
    client.get(f"{API}/keys/{aes_key.pk}/timeline/")
    # token, roles, the key, then lifecycle.selectors.key_timeline: transitions (with version and
    # job), the key's step events, their requests, the requests' decisions
    with django_assert_num_queries(7):
        response = client.get(f"{API}/keys/{aes_key.pk}/timeline/")
    entries = response.json()["results"]
    active = next(e for e in entries if e["to_state"] == "active" and e["version"] is None)
    assert active["from_state"] == "pre_activation" and active["nist_transition"] == 4
    assert active["request"]["operation"] == "generate"
    assert active["request"]["requester"] == "alice"
    assert [d["approver"] for d in active["decisions"]] == ["bob", "carol"]
    assert all(d["decision"] == "approve" for d in active["decisions"])
    assert entries[0]["to_state"] == "pre_activation" and entries[0]["from_state"] is None


def test_the_timeline_labels_steps_and_reviews(cast: SimpleNamespace, aes_key: Key, clock: Any) -> None:
    from tests.api.conftest import run
    from tests.conftest import approve

    run("rotate", aes_key, cast.alice, cast.approvers, clock)
    suspension = run("suspend", aes_key, cast.bob, [], clock)
    review = ApprovalRequest.objects.get(review_of=suspension)
    approve(review, cast.carol, clock=clock)
    entries = api_client(cast.erin).get(f"{API}/keys/{aes_key.pk}/timeline/").json()["results"]
    assert {e["kind"] for e in entries} == {"transition", "step", "review"}
    transition = entries[0]
    assert (transition["kind"], transition["action"], transition["summary"], transition["reviewed"]) == (
        "transition",
        "",
        "",
        None,
    )
    (rotation,) = [e for e in entries if e["kind"] == "step"]
    assert rotation["action"] == "key.rotation_started" and rotation["version"] == 2
    assert rotation["summary"].startswith("Rotation started") and rotation["request"]["operation"] == "rotate"
    assert rotation["from_state"] is None and rotation["nist_transition"] is None
    (reviewed,) = [e for e in entries if e["kind"] == "review"]
    assert reviewed["outcome"] == "confirmed" and reviewed["reviewed"] == str(suspension.pk)
    assert reviewed["summary"] == "The reviewers confirmed the immediate suspension."
    assert [d["approver"] for d in reviewed["decisions"]] == ["carol"]


def test_the_version_list_query_count_does_not_grow_with_the_number_of_versions(
    cast: SimpleNamespace, aes_key: Key, clock: Any, django_assert_num_queries: Any
) -> None:
    from tests.api.conftest import run

    client = api_client(cast.erin)
    client.get(f"{API}/keys/{aes_key.pk}/versions/")
    # token, roles, the key, count, page (with the HSM), the page's backups
    with django_assert_num_queries(6):
        assert client.get(f"{API}/keys/{aes_key.pk}/versions/").json()["count"] == 1
    for _ in range(3):
        run("rotate", aes_key, cast.alice, cast.approvers, clock)
    client.get(f"{API}/keys/{aes_key.pk}/versions/")
    with django_assert_num_queries(6):
        assert client.get(f"{API}/keys/{aes_key.pk}/versions/").json()["count"] == 4


@pytest.mark.parametrize("key_id", [UNKNOWN, "not-a-uuid", "123"])
@pytest.mark.parametrize("suffix", ["", "versions/", "timeline/"])
def test_an_unknown_key_is_a_404(cast: SimpleNamespace, key_id: str, suffix: str) -> None:
    assert_error(api_client(cast.erin).get(f"{API}/keys/{key_id}/{suffix}"), 404, "not_found")


# --- requesting a new key -------------------------------------------------------------------------


def new_key(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "orders-dek",
        "algorithm": "AES-256",
        "usage": "encrypt_decrypt",
        "policy": "standard",
        "justification": "encrypt order records (CHG-1234)",
        **overrides,
    }


def test_a_key_admin_requests_a_key_and_gets_the_request(cast: SimpleNamespace, clock: Any) -> None:
    response = api_client(cast.alice, scopes=["request"]).post(
        f"{API}/keys/", new_key(tags=["pci"], description="orders"), format="json"
    )
    assert response.status_code == 202
    body = response.json()
    assert body["operation"] == "generate" and body["state"] == "pending"
    assert body["quorum"]["approvals"] == 2
    assert body["parameters"]["activate_at"] == "2026-12-04T09:00:00+00:00"  # omitted: now
    assert body["parameters"]["tags"] == ["pci"]
    assert ApprovalRequest.objects.get(pk=body["id"]).digest == body["digest"]
    assert not Key.objects.filter(name="orders-dek").exists()


def test_activate_at_null_keeps_the_key_in_pre_activation(cast: SimpleNamespace, clock: Any) -> None:
    from tests.conftest import approve

    response = api_client(cast.alice).post(f"{API}/keys/", new_key(activate_at=None), format="json")
    assert response.status_code == 202 and response.json()["parameters"]["activate_at"] is None
    with on_commit():
        approve(ApprovalRequest.objects.get(pk=response.json()["id"]), cast.bob, cast.carol, clock=clock)
    assert Key.objects.get(name="orders-dek").state == KeyState.PRE_ACTIVATION


def test_activate_at_in_the_future_is_kept(cast: SimpleNamespace, clock: Any) -> None:
    response = api_client(cast.alice).post(f"{API}/keys/", new_key(activate_at="2026-12-24T09:00:00Z"), format="json")
    assert response.json()["parameters"]["activate_at"] == "2026-12-24T09:00:00+00:00"


def test_a_policy_without_approvals_answers_201_with_the_key(cast: SimpleNamespace, clock: Any) -> None:
    lenient_policy()
    with on_commit():
        response = api_client(cast.alice).post(f"{API}/keys/", new_key(policy="lenient"), format="json")
    assert response.status_code == 201
    body = response.json()
    key = Key.objects.get(name="orders-dek")
    assert body["id"] == str(key.pk) and body["name"] == "orders-dek"
    assert ApprovalRequest.objects.get(operation="generate").result["key_id"] == str(key.pk)
    assert key.state == KeyState.ACTIVE  # the job ran once the request committed


@pytest.mark.parametrize("who", ["bob", "olivia", "erin", "svc", "mallory"])
def test_only_key_admins_request_keys(cast: SimpleNamespace, clock: Any, who: str) -> None:
    response = api_client(getattr(cast, who)).post(f"{API}/keys/", new_key(), format="json")
    assert_error(response, 403, "role_required")
    assert not ApprovalRequest.objects.exists()


def test_a_refused_request_is_audited(cast: SimpleNamespace, clock: Any) -> None:
    api_client(cast.erin).post(f"{API}/keys/", new_key(), format="json")
    event = AuditEvent.objects.get(action="request.refused")
    assert event.actor == "erin" and event.details["operation"] == "generate"


def test_requesting_a_key_needs_the_request_scope(cast: SimpleNamespace, clock: Any, client: Any) -> None:
    assert_error(
        api_client(cast.alice, scopes=["read"]).post(f"{API}/keys/", new_key(), format="json"), 403, "scope_required"
    )
    assert_error(client.post(f"{API}/keys/", new_key(), content_type="application/json"), 401)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": None}, "name"),
        ({"algorithm": "DES"}, "algorithm"),
        ({"usage": "sign_verify"}, "usage"),  # AES cannot sign
        ({"usage": "fly"}, "usage"),
        ({"name": "bad name!"}, "name"),
        ({"tags": "pci"}, "tags"),
        ({"tags": ["a b"]}, "tags"),
        ({"activate_at": "tomorrow"}, "activate_at"),
        ({"justification": "   "}, "justification"),
        ({"policy": "nope"}, "policy"),
        ({"hsm": "nope"}, "hsm"),
        ({"description": "x" * 2001}, "description"),
        ({"name": "x" * 65}, "name"),
    ],
)
def test_malformed_key_requests_are_400s(cast: SimpleNamespace, clock: Any, body: dict[str, Any], field: str) -> None:
    error = assert_error(api_client(cast.alice).post(f"{API}/keys/", new_key(**body), format="json"), 400)
    assert field in error["details"] or field in error["message"], error
    assert not ApprovalRequest.objects.exists()


@pytest.mark.parametrize("raw", ["[]", '"x"', "{", "null", "12"])
def test_a_body_that_is_not_a_json_object_is_a_400(cast: SimpleNamespace, clock: Any, raw: str) -> None:
    response = api_client(cast.alice).post(f"{API}/keys/", raw, content_type="application/json")
    assert_error(response, 400)


def test_a_taken_name_is_a_409(cast: SimpleNamespace, aes_key: Key) -> None:
    response = api_client(cast.alice).post(f"{API}/keys/", new_key(name="payments-dek"), format="json")
    assert_error(response, 409, "name_taken")


def test_a_second_pending_request_for_the_same_name_is_a_409(cast: SimpleNamespace, clock: Any) -> None:
    client = api_client(cast.alice)
    assert client.post(f"{API}/keys/", new_key(), format="json").status_code == 202
    assert_error(client.post(f"{API}/keys/", new_key(), format="json"), 409, "request_pending")
