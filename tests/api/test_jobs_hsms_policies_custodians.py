"""Jobs, HSMs, policies and custodians through the API; their changes are dual-controlled requests."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest

from accounts.models import Acknowledgement
from approvals.models import ApprovalRequest
from lifecycle.models import Job, Key, Policy
from tests.api.conftest import API, assert_error, on_commit
from tests.conftest import api_client, approve, make_user

pytestmark = pytest.mark.django_db

UNKNOWN = "00000000-0000-4000-8000-000000000000"


# --- jobs -----------------------------------------------------------------------------------------


def test_jobs_are_listed_and_shown(cast: SimpleNamespace, aes_key: Key) -> None:
    client = api_client(cast.erin)
    job = Job.objects.get(key=aes_key)
    listed = client.get(f"{API}/jobs/?kind=generate&status=succeeded&key={aes_key.pk}").json()
    assert [row["id"] for row in listed["results"]] == [str(job.pk)]
    shown = client.get(f"{API}/jobs/{job.pk}/").json()
    assert shown["kind"] == "generate" and shown["status"] == "succeeded"
    assert shown["key"] == str(aes_key.pk) and shown["version"] == 1 and shown["hsm"] == "default"
    assert shown["request"] == str(job.request_id) and shown["attempts"] == 1 and shown["error"] == ""
    assert client.get(f"{API}/jobs/?status=failed").json()["count"] == 0


def test_job_reads_refuse_bad_filters_unknown_ids_and_the_wrong_callers(
    cast: SimpleNamespace, aes_key: Key, client: Any
) -> None:
    erin = api_client(cast.erin)
    assert_error(erin.get(f"{API}/jobs/?status=sleeping"), 400, "invalid")
    assert_error(erin.get(f"{API}/jobs/?key=not-a-uuid"), 400, "invalid")
    assert_error(erin.get(f"{API}/jobs/{UNKNOWN}/"), 404, "not_found")
    assert_error(erin.get(f"{API}/jobs/xyz/"), 404, "not_found")
    assert_error(api_client(cast.svc).get(f"{API}/jobs/"), 403, "role_required")
    assert_error(api_client(cast.erin, scopes=["use"]).get(f"{API}/jobs/"), 403, "scope_required")
    assert_error(client.get(f"{API}/jobs/"), 401)


def test_the_job_list_runs_a_fixed_number_of_queries(
    cast: SimpleNamespace, aes_key: Key, clock: Any, django_assert_num_queries: Any
) -> None:
    from tests.api.conftest import make_key

    client = api_client(cast.erin)
    client.get(f"{API}/jobs/")
    with django_assert_num_queries(4):  # token, roles, count, page
        client.get(f"{API}/jobs/")
    for index in range(4):
        make_key(cast.alice, cast.approvers, clock, name=f"more-{index}")
    client.get(f"{API}/jobs/")
    with django_assert_num_queries(4):
        assert client.get(f"{API}/jobs/").json()["count"] == 5


# --- HSMs -----------------------------------------------------------------------------------------


def test_hsms_are_listed_with_their_health(cast: SimpleNamespace, aes_key: Key) -> None:
    [hsm] = api_client(cast.olivia).get(f"{API}/hsms/").json()["results"]
    assert hsm["name"] == "default" and hsm["is_default"] is True and hsm["token_label"] == "kms-test"
    assert hsm["live_versions"] == 1
    assert hsm["health"]["ok"] is True and hsm["health"]["object_count"] >= 1 and hsm["health"]["error"] == ""
    assert "pin" not in str(hsm).lower()


def test_an_unreachable_hsm_reports_unhealthy_not_a_500(cast: SimpleNamespace, kms: Any, clock: Any) -> None:
    from lifecycle.models import Hsm

    Hsm.objects.create(
        name="gone", module=kms.hsm.module, token_label="no-such-token", pin_env="X", registered_at=clock.now()
    )
    Hsm.objects.create(name="no-lib", module="/nonexistent/libp11.so", token_label="t", registered_at=clock.now())
    rows = {h["name"]: h for h in api_client(cast.erin).get(f"{API}/hsms/").json()["results"]}
    assert rows["gone"]["health"]["ok"] is False and "no-such-token" in rows["gone"]["health"]["error"]
    assert rows["no-lib"]["health"]["ok"] is False and "/nonexistent/libp11.so" in rows["no-lib"]["health"]["error"]
    assert rows["default"]["health"]["ok"] is True


def test_the_hsm_list_without_health_runs_a_fixed_number_of_queries(
    cast: SimpleNamespace, kms: Any, clock: Any, django_assert_num_queries: Any
) -> None:
    from lifecycle.models import Hsm

    client = api_client(cast.erin)
    client.get(f"{API}/hsms/?health=false")
    with django_assert_num_queries(4):
        assert client.get(f"{API}/hsms/?health=false").json()["results"][0]["health"] is None
    for index in range(3):
        Hsm.objects.create(name=f"h{index}", module="/x", token_label=f"t{index}", registered_at=clock.now())
    with django_assert_num_queries(4):
        assert client.get(f"{API}/hsms/?health=false").json()["count"] == 4
    assert_error(client.get(f"{API}/hsms/?health=maybe"), 400, "invalid")


def test_a_security_officer_requests_an_hsm_registration(cast: SimpleNamespace, kms: Any, clock: Any) -> None:
    body = {
        "justification": "second site",
        "name": "site-b",
        "module": kms.hsm.module,
        "token_label": kms.token.other_label,
        "pin_env": "KMS_HSM2_PIN",
        "location": "rack 4",
    }
    response = api_client(cast.olivia).post(f"{API}/hsms/", body, format="json")
    assert response.status_code == 202
    assert response.json()["operation"] == "hsm_change" and response.json()["quorum"]["approvals"] == 2
    with on_commit():
        approve(ApprovalRequest.objects.get(pk=response.json()["id"]), cast.bob, cast.carol, clock=clock)
    names = [h["name"] for h in api_client(cast.olivia).get(f"{API}/hsms/").json()["results"]]
    assert names == ["default", "site-b"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "module": "relative.so", "token_label": "t", "pin_env": "P"},
        {"name": "x", "module": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "t"},
        {"name": "x", "module": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "t", "pin": "1234"},
        {"name": "x", "module": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "t", "pin_env": "lower-case"},
        {"name": "bad name", "module": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "t", "pin_env": "P"},
        {"name": "x", "action": "explode"},
        {"name": "nope", "action": "retire"},
    ],
)
def test_malformed_hsm_requests_are_400s(cast: SimpleNamespace, kms: Any, body: dict[str, Any]) -> None:
    response = api_client(cast.olivia).post(f"{API}/hsms/", {"justification": "j", **body}, format="json")
    error = assert_error(response, 400)
    assert "1234" not in str(error)
    assert not ApprovalRequest.objects.exists()


def test_only_security_officers_request_hsm_changes(cast: SimpleNamespace, kms: Any, client: Any) -> None:
    body = {"justification": "j", "name": "x", "action": "retire"}
    for user in (cast.alice, cast.bob, cast.erin, cast.svc, cast.mallory):
        assert_error(api_client(user).post(f"{API}/hsms/", body, format="json"), 403, "role_required")
    assert_error(
        api_client(cast.olivia, scopes=["read"]).post(f"{API}/hsms/", body, format="json"), 403, "scope_required"
    )
    assert_error(client.get(f"{API}/hsms/"), 401)


# --- policies -------------------------------------------------------------------------------------


def test_policies_show_their_current_settings_and_history(cast: SimpleNamespace, kms: Any) -> None:
    client = api_client(cast.alice)
    [row] = client.get(f"{API}/policies/").json()["results"]
    current = row["current"]
    assert row["name"] == "standard" and current["version"] == 1
    assert current["destruction_wait_days"] == 30 and current["backup"] == "allowed" and current["exportable"] is False
    assert current["quorum"]["generate"]["approvals"] == 2 and current["quorum"]["suspend"]["approvals"] == 0
    assert set(current) >= {
        "description",
        "algorithms",
        "originator_period_days",
        "recipient_period_days",
        "auto_rotate",
        "rotation_period_days",
        "destruction_wait_days",
        "backup",
        "exportable",
        "quorum",
    }
    detail = client.get(f"{API}/policies/standard/").json()
    assert [v["version"] for v in detail["versions"]] == [1]
    assert_error(client.get(f"{API}/policies/nope/"), 404, "not_found")


def test_a_policy_change_is_a_dual_controlled_request(cast: SimpleNamespace, kms: Any, clock: Any) -> None:
    body = {
        "name": "standard",
        "destruction_wait_days": 7,
        "quorum": {"rotate": {"approvals": 2}},
        "justification": "PCI finding 12",
    }
    response = api_client(cast.olivia).post(f"{API}/policies/", body, format="json")
    assert response.status_code == 202
    settings = response.json()["parameters"]["settings"]
    assert settings["destruction_wait_days"] == 7 and settings["quorum"]["rotate"]["approvals"] == 2
    assert settings["quorum"]["generate"]["approvals"] == 2  # untouched rules keep their values
    assert Policy.objects.get(name="standard").current.destruction_wait_days == 30  # not before approval
    with on_commit():
        approve(ApprovalRequest.objects.get(pk=response.json()["id"]), cast.bob, cast.carol, clock=clock)
    detail = api_client(cast.olivia).get(f"{API}/policies/standard/").json()
    assert detail["current"]["version"] == 2 and detail["current"]["destruction_wait_days"] == 7
    assert [v["version"] for v in detail["versions"]] == [2, 1]


def test_a_new_policy_and_an_unchanged_one(cast: SimpleNamespace, kms: Any) -> None:
    client = api_client(cast.olivia)
    created = client.post(
        f"{API}/policies/", {"name": "short-lived", "algorithms": ["AES-256"], "justification": "j"}, format="json"
    )
    assert created.status_code == 202 and created.json()["parameters"]["base_version"] is None
    same = client.post(
        f"{API}/policies/", {"name": "standard", "destruction_wait_days": 30, "justification": "j"}, format="json"
    )
    assert_error(same, 400, "no_change")


@pytest.mark.parametrize(
    "body",
    [
        {"destruction_wait_days": 91},
        {"destruction_wait_days": -1},
        {"destruction_wait_days": "a month"},
        {"algorithms": ["DES"]},
        {"algorithms": []},
        {"backup": "sometimes"},
        {"quorum": {"teleport": {"approvals": 1}}},
        {"quorum": {"policy_change": {"approvals": 0}}},
        {"quorum": {"rotate": {"approver_roles": ["auditor"]}}},
        {"quorum": {"rotate": "two"}},
        {"originator_period_days": 100, "recipient_period_days": 10},
        {"name": "bad name"},
        {"justification": ""},
    ],
)
def test_malformed_policy_changes_are_400s(cast: SimpleNamespace, kms: Any, body: dict[str, Any]) -> None:
    response = api_client(cast.olivia).post(
        f"{API}/policies/", {"name": "standard", "justification": "j", **body}, format="json"
    )
    assert_error(response, 400)
    assert not ApprovalRequest.objects.exists()


def test_only_security_officers_propose_policies(cast: SimpleNamespace, kms: Any, client: Any) -> None:
    body = {"name": "standard", "destruction_wait_days": 7, "justification": "j"}
    for user in (cast.alice, cast.bob, cast.erin, cast.mallory):
        assert_error(api_client(user).post(f"{API}/policies/", body, format="json"), 403, "role_required")
    assert_error(api_client(cast.svc).get(f"{API}/policies/"), 403, "role_required")
    assert_error(client.get(f"{API}/policies/"), 401)


def test_the_policy_list_runs_a_fixed_number_of_queries(
    cast: SimpleNamespace, kms: Any, django_assert_num_queries: Any
) -> None:
    from tests.api.conftest import lenient_policy

    client = api_client(cast.erin)
    client.get(f"{API}/policies/")
    with django_assert_num_queries(5):  # token, roles, count, page, current versions
        client.get(f"{API}/policies/")
    lenient_policy("a")
    lenient_policy("b")
    with django_assert_num_queries(5):
        assert client.get(f"{API}/policies/").json()["count"] == 3


# --- custodians -----------------------------------------------------------------------------------


def test_custodians_show_roles_second_factor_and_acknowledgement(cast: SimpleNamespace, clock: Any) -> None:
    make_user("nora", {"custodian"}, acknowledged=False)
    rows = {r["username"]: r for r in api_client(cast.olivia).get(f"{API}/custodians/").json()["results"]}
    assert "mallory" not in rows  # no role
    assert rows["bob"]["roles"] == ["custodian"] and rows["bob"]["totp_confirmed"] is True
    assert rows["bob"]["acknowledgement"]["current"] is True
    assert rows["nora"]["acknowledgement"] == {"current": False, "acknowledged_at": None}
    assert rows["alice"]["acknowledgement"] is None  # not a custodian
    assert rows["svc"]["roles"] == ["api_client"] and rows["svc"]["totp_confirmed"] is False
    custodians = api_client(cast.olivia).get(f"{API}/custodians/?role=custodian").json()["results"]
    assert [r["username"] for r in custodians] == ["bob", "carol", "dave", "nora"]
    assert_error(api_client(cast.olivia).get(f"{API}/custodians/?role=king"), 400, "invalid")


def test_an_acknowledgement_older_than_a_year_is_not_current(cast: SimpleNamespace, clock: Any) -> None:
    Acknowledgement.objects.filter(user=cast.bob).update(acknowledged_at=clock.now() - dt.timedelta(days=366))
    rows = {r["username"]: r for r in api_client(cast.erin).get(f"{API}/custodians/").json()["results"]}
    assert rows["bob"]["acknowledgement"]["current"] is False


def test_the_custodian_list_runs_a_fixed_number_of_queries(
    cast: SimpleNamespace, django_assert_num_queries: Any
) -> None:
    client = api_client(cast.erin)
    client.get(f"{API}/custodians/")
    with django_assert_num_queries(5):  # token, roles, count, page (with TOTP and acknowledgement), groups
        assert client.get(f"{API}/custodians/").json()["count"] == 7
    for index in range(5):
        make_user(f"extra{index}", {"custodian"})
    with django_assert_num_queries(5):
        assert client.get(f"{API}/custodians/").json()["count"] == 12


def test_a_role_change_is_a_dual_controlled_request(cast: SimpleNamespace, clock: Any) -> None:
    response = api_client(cast.olivia).post(
        f"{API}/custodians/mallory/roles/", {"roles": ["custodian"], "justification": "new custodian"}, format="json"
    )
    assert response.status_code == 202
    assert response.json()["parameters"] == {"username": "mallory", "roles_before": [], "roles": ["custodian"]}
    with on_commit():
        approve(ApprovalRequest.objects.get(pk=response.json()["id"]), cast.bob, cast.carol, clock=clock)
    assert [
        r["username"] for r in api_client(cast.olivia).get(f"{API}/custodians/?role=custodian").json()["results"]
    ] == [
        "bob",
        "carol",
        "dave",
        "mallory",
    ]


def test_role_change_refusals(cast: SimpleNamespace, client: Any) -> None:
    olivia = api_client(cast.olivia)
    body = {"roles": ["custodian"], "justification": "j"}
    assert_error(olivia.post(f"{API}/custodians/nobody/roles/", body, format="json"), 404, "not_found")
    assert_error(olivia.post(f"{API}/custodians/olivia/roles/", body, format="json"), 400, "self_role_change")
    assert_error(olivia.post(f"{API}/custodians/bob/roles/", body, format="json"), 400, "no_change")
    assert_error(
        olivia.post(
            f"{API}/custodians/bob/roles/", {"roles": ["auditor", "custodian"], "justification": "j"}, format="json"
        ),
        400,
        "invalid_roles",
    )
    assert_error(
        olivia.post(f"{API}/custodians/bob/roles/", {"roles": "custodian", "justification": "j"}, format="json"), 400
    )
    assert_error(olivia.post(f"{API}/custodians/bob/roles/", {"roles": ["custodian"]}, format="json"), 400)
    for user in (cast.alice, cast.bob, cast.erin, cast.mallory, cast.svc):
        assert_error(
            api_client(user).post(f"{API}/custodians/mallory/roles/", body, format="json"), 403, "role_required"
        )
    assert_error(client.get(f"{API}/custodians/"), 401)
    assert_error(api_client(cast.svc).get(f"{API}/custodians/"), 403, "role_required")
    assert not ApprovalRequest.objects.exists()


def test_a_policy_reads_with_the_spec_field_names_at_the_top(cast: SimpleNamespace, kms: Any) -> None:
    """GET policies/ shows the same flat SPEC §5 fields that POST policies/ takes."""
    body = api_client(cast.erin).get(f"{API}/policies/").json()
    standard = next(p for p in body["results"] if p["name"] == "standard")
    assert standard["destruction_wait_days"] == 30
    assert standard["backup"] == "allowed"
    assert standard["exportable"] is False
    assert standard["quorum"]["generate"]["approvals"] == 2
    assert standard["version"] == standard["current"]["version"] == 1
    schema = api_client(cast.erin).get("/api/schema/?format=json").json()
    assert "QuorumRule" in schema["components"]["schemas"]
