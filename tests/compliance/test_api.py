"""The compliance API: roles and scopes, the drill-down, report downloads, the review, and bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from audit.models import AuditEvent
from tests.conftest import api_client

from .helpers import bulk_keys, orm_key

pytestmark = pytest.mark.django_db

FRAMEWORKS = "/api/v1/compliance/frameworks/"
CONTROLS = "/api/v1/compliance/controls/"
CHECKS = "/api/v1/compliance/checks/"
REPORT = "/api/v1/compliance/report/"
REVIEW = "/api/v1/compliance/audit-review/"


@pytest.fixture
def estate(clock: Any, cast: Any) -> Any:
    now = clock.now()
    orm_key("payments", kms=cast.kms, owner=cast.alice, now=now)
    cast.stale = orm_key("stale", kms=cast.kms, owner=cast.alice, now=now, activated_days_ago=800)
    return cast


def error_code(response: Any) -> str:
    return response.json()["error"]["code"]


# --- Frameworks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["erin", "olivia", "alice", "bob", "svc"])
def test_every_role_reads_the_framework_summaries(estate: Any, who: str) -> None:
    response = api_client(getattr(estate, who), scopes=["read"]).get(FRAMEWORKS)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 4
    pci = body["results"][0]
    assert (pci["slug"], pci["name"], pci["controls"]) == ("pci-dss", "PCI DSS 4.0.1", 33)
    assert set(pci["summary"]) == {"pass", "warn", "fail", "not_applicable", "not_assessed", "total"}
    assert pci["summary"]["total"] == 33
    assert pci["summary"]["fail"] >= 1


def test_a_user_without_a_role_reads_nothing(estate: Any) -> None:
    client = api_client(estate.mallory)
    for url in (FRAMEWORKS, f"{CONTROLS}?framework=pci-dss", CHECKS, f"{REPORT}?framework=pci-dss&format=csv"):
        response = client.get(url)
        assert response.status_code == 403, url
        assert error_code(response) == "role_required"


def test_anonymous_callers_get_401(estate: Any) -> None:
    response = APIClient().get(FRAMEWORKS)
    assert response.status_code == 401
    assert error_code(response) == "not_authenticated"


def test_a_token_without_the_read_scope_is_refused(estate: Any) -> None:
    response = api_client(estate.erin, scopes=["use"]).get(FRAMEWORKS)
    assert response.status_code == 403
    assert error_code(response) == "scope_required"


# --- Controls and checks --------------------------------------------------------------------------


def test_controls_carry_status_figure_and_the_offending_objects(estate: Any) -> None:
    response = api_client(estate.erin).get(CONTROLS, {"framework": "pci-dss"})

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 33
    control = next(c for c in body["results"] if c["id"] == "3.7.4")
    assert control["status"] == "fail"
    assert control["framework"] == "pci-dss"
    assert control["lifecycle_phases"] == ["rotation"]
    check = next(c for c in control["checks"] if c["id"] == "cryptoperiod")
    assert check["figure"] == "1 of 2 active keys inside their cryptoperiod"
    assert check["offenders"] == [
        {
            "kind": "key",
            "label": "stale",
            "reason": "version 1's originator-usage period ended on 2026-09-25",
            "url": f"/keys/{estate.stale.pk}/",
            "severity": "fail",
        }
    ]
    assert "PCI DSS 4.0.1:3.7.4" in check["controls"]
    unassessed = next(c for c in body["results"] if c["id"] == "3.5.1")
    assert (unassessed["status"], unassessed["checks"]) == ("not_assessed", [])


def test_controls_are_paginated(estate: Any) -> None:
    body = api_client(estate.erin).get(CONTROLS, {"framework": "nist-800-53", "page_size": 10, "page": 3}).json()
    assert body["count"] == 28
    assert len(body["results"]) == 8
    assert body["next"] is None


@pytest.mark.parametrize("who", ["alice", "bob", "svc"])
def test_controls_checks_and_reports_are_for_auditors_and_security_officers(estate: Any, who: str) -> None:
    client = api_client(getattr(estate, who))
    for url in (f"{CONTROLS}?framework=pci-dss", CHECKS, f"{CHECKS}mfa/", f"{REPORT}?framework=pci-dss&format=csv"):
        response = client.get(url)
        assert response.status_code == 403, url
        assert error_code(response) == "role_required"
    assert not AuditEvent.objects.filter(action="compliance.report_exported").exists()


def test_checks_list_and_detail(estate: Any) -> None:
    client = api_client(estate.olivia)
    body = client.get(CHECKS).json()
    assert body["count"] == 18
    detail = client.get(f"{CHECKS}cryptoperiod/")
    assert detail.status_code == 200
    assert detail.json()["status"] == "fail"
    missing = client.get(f"{CHECKS}no-such-check/")
    assert missing.status_code == 404
    assert error_code(missing) == "not_found"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "framework"),
        ({"framework": ""}, "framework"),
        ({"framework": "sox"}, "framework"),
        ({"framework": "x" * 5000}, "framework"),
        ({"framework": "pci-dss\x00"}, "framework"),
    ],
)
def test_a_bad_framework_is_a_400_naming_the_parameter(estate: Any, params: dict[str, str], field: str) -> None:
    response = api_client(estate.erin).get(CONTROLS, params)
    assert response.status_code == 400
    assert field in response.json()["error"]["details"]


# --- Reports --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [
        ("csv", "text/csv; charset=utf-8"),
        ("json", "application/json"),
        ("pdf", "application/pdf"),
        ("oscal", "application/json"),
    ],
)
def test_reports_download_in_every_format_and_are_audited(estate: Any, fmt: str, content_type: str) -> None:
    response = api_client(estate.erin, scopes=["read"]).get(REPORT, {"framework": "hipaa", "format": fmt})

    assert response.status_code == 200
    assert response["Content-Type"] == content_type
    assert 'filename="kms-compliance-hipaa-' in response["Content-Disposition"]
    if fmt == "oscal":
        assert len(json.loads(response.content)["assessment-results"]["results"][0]["findings"]) == 13
    event = AuditEvent.objects.get(action="compliance.report_exported")
    assert (event.actor, event.via, event.details["format"], event.target_id) == ("erin", "api", fmt, "hipaa")


def test_an_accept_header_does_not_get_in_the_way_of_a_download(estate: Any) -> None:
    client = api_client(estate.erin)
    response = client.get(REPORT, {"framework": "pci-dss", "format": "pdf"}, HTTP_ACCEPT="application/pdf")
    assert response.status_code == 200
    assert response.content.startswith(b"%PDF-")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"framework": "pci-dss"}, "format"),
        ({"framework": "pci-dss", "format": "xlsx"}, "format"),
        ({"framework": "pci-dss", "format": "../../etc/passwd"}, "format"),
        ({"framework": "nope", "format": "csv"}, "framework"),
        ({"format": "csv"}, "framework"),
    ],
)
def test_a_bad_report_request_is_a_400_not_a_5xx(estate: Any, params: dict[str, str], field: str) -> None:
    response = api_client(estate.erin).get(REPORT, params)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert field in response.json()["error"]["details"]
    assert not AuditEvent.objects.filter(action="compliance.report_exported").exists()


# --- The review -----------------------------------------------------------------------------------


def test_an_auditor_records_the_review_through_the_api(estate: Any) -> None:
    response = api_client(estate.erin, scopes=["read", "request"]).post(REVIEW, {"note": "weekly"}, format="json")

    assert response.status_code == 201
    event = AuditEvent.objects.get(action="audit.reviewed")
    assert response.json() == {"seq": event.seq, "at": response.json()["at"], "failures_reviewed": 0}
    assert (event.actor, event.via, event.details["note"]) == ("erin", "api", "weekly")


@pytest.mark.parametrize(
    ("who", "scopes", "body", "status", "code"),
    [
        ("olivia", None, {}, 403, "role_required"),
        ("alice", None, {}, 403, "role_required"),
        ("erin", ["read"], {}, 403, "scope_required"),
        ("erin", None, {"note": "x" * 1001}, 400, "invalid"),
        ("erin", None, {"note": ["not", "text"]}, 400, "invalid"),
    ],
)
def test_the_review_refuses_other_roles_scopes_and_bad_bodies(
    estate: Any, who: str, scopes: list[str] | None, body: dict[str, Any], status: int, code: str
) -> None:
    response = api_client(getattr(estate, who), scopes=scopes).post(REVIEW, body, format="json")
    assert response.status_code == status
    assert error_code(response) == code
    assert not AuditEvent.objects.filter(action="audit.reviewed").exists()


def test_the_review_refuses_a_body_that_is_not_json(estate: Any) -> None:
    response = api_client(estate.erin).post(REVIEW, data="note=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert error_code(response) == "unsupported_media_type"
    broken = api_client(estate.erin).post(REVIEW, data="{not json", content_type="application/json")
    assert broken.status_code == 400


@pytest.mark.parametrize(
    ("url", "queries"),
    [(FRAMEWORKS, 38), (f"{CONTROLS}?framework=pci-dss", 35), (CHECKS, 36)],
)
def test_list_queries_stay_flat_from_10_to_1000_keys(
    clock: Any, cast: Any, django_assert_num_queries: Any, url: str, queries: int
) -> None:
    client = api_client(cast.erin)
    client.get(url)  # the token's first use records it (once a minute at most)
    bulk_keys(10, kms=cast.kms, owner=cast.alice, now=clock.now(), prefix="small")
    with django_assert_num_queries(queries):
        assert client.get(url).status_code == 200
    bulk_keys(990, kms=cast.kms, owner=cast.alice, now=clock.now(), prefix="large")
    with django_assert_num_queries(queries):
        assert client.get(url).status_code == 200
