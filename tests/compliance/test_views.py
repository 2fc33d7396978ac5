"""The console pages: who sees what, the drill-down to offending objects, downloads, the review action."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from tests.conftest import web_client

from .helpers import bulk_keys, orm_key

pytestmark = pytest.mark.django_db

INDEX = "/compliance/"
PCI = "/compliance/pci-dss/"
CONTROL = "/compliance/pci-dss/controls/3.7.4/"
CHECK = "/compliance/checks/cryptoperiod/"
REPORT = "/compliance/pci-dss/report/csv/"
REVIEW = "/compliance/audit-review/"


@pytest.fixture
def estate(clock: Any, cast: Any) -> Any:
    now = clock.now()
    orm_key("payments", kms=cast.kms, owner=cast.alice, now=now)
    stale = orm_key("stale", kms=cast.kms, owner=cast.alice, now=now, activated_days_ago=800)
    cast.stale = stale
    return cast


def test_the_urls_are_where_the_nav_expects_them() -> None:
    assert reverse("compliance:index") == INDEX
    assert reverse("compliance:framework", args=["pci-dss"]) == PCI
    assert (
        reverse("compliance:control", args=["hipaa", "164.312(a)(2)(iv)"])
        == "/compliance/hipaa/controls/164.312(a)(2)(iv)/"
    )


# --- Who sees what --------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["erin", "olivia"])
def test_auditors_and_security_officers_see_everything(estate: Any, who: str) -> None:
    client = web_client(getattr(estate, who))
    index = client.get(INDEX)
    assert index.status_code == 200
    assert b"Evidence checks" in index.content
    page = client.get(PCI)
    assert page.status_code == 200
    assert b"3.7.4" in page.content
    assert reverse("compliance:report", args=["pci-dss", "oscal"]).encode() in page.content
    assert client.get(CONTROL).status_code == 200
    assert client.get(CHECK).status_code == 200


@pytest.mark.parametrize("who", ["alice", "bob", "dave"])
def test_other_roles_see_the_summary_only(estate: Any, who: str) -> None:
    client = web_client(getattr(estate, who))
    index = client.get(INDEX)
    assert index.status_code == 200
    assert b"PCI DSS 4.0.1" in index.content
    assert b"Evidence checks" not in index.content
    page = client.get(PCI)
    assert page.status_code == 200
    assert b"You see the summary" in page.content
    assert b"controls/3.7.4/" not in page.content
    assert b"/report/" not in page.content
    for url in (CONTROL, CHECK, REPORT):
        assert client.get(url).status_code == 403, url
    assert not AuditEvent.objects.filter(action="compliance.report_exported").exists()


@pytest.mark.parametrize("who", ["mallory", "svc"])
def test_users_without_a_console_role_see_nothing(estate: Any, who: str) -> None:
    client = web_client(getattr(estate, who))
    for url in (INDEX, PCI, CONTROL, CHECK, REPORT):
        assert client.get(url).status_code == 403, url


def test_anonymous_visitors_are_sent_to_sign_in(estate: Any) -> None:
    from django.test import Client

    for url in (INDEX, PCI, CONTROL, REPORT):
        response = Client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize(
    "url",
    [
        "/compliance/sox/",
        "/compliance/pci-dss/controls/9.9.9/",
        "/compliance/pci-dss/controls/3.7%00/",
        "/compliance/pci-dss/controls/" + "9" * 300 + "/",
        "/compliance/hipaa/controls/3.7.4/",
        "/compliance/checks/no-such-check/",
        "/compliance/pci-dss/report/xlsx/",
        "/compliance/sox/report/csv/",
    ],
)
def test_unknown_frameworks_controls_checks_and_formats_are_404(estate: Any, url: str) -> None:
    assert web_client(estate.erin).get(url).status_code == 404


# --- Drill-down -----------------------------------------------------------------------------------


def test_the_framework_page_shows_each_control_with_status_and_figure(estate: Any) -> None:
    page = web_client(estate.erin).get(PCI)
    html = page.content.decode()
    row = html[html.index('href="/compliance/pci-dss/controls/3.7.4/"') :]
    row = row[: row.index("</tr>")]
    assert "badge-bad" in row and "Fail" in row
    assert "1 of 2 active keys inside their cryptoperiod" in row
    assert "Not assessed automatically" in html  # 3.5.1 and friends


def test_the_control_page_names_the_offending_objects_with_links(estate: Any) -> None:
    page = web_client(estate.erin).get(CONTROL)
    html = page.content.decode()
    assert "Key change at end of cryptoperiod" in html
    assert "Active keys inside their cryptoperiod" in html
    assert f'href="{reverse("lifecycle:key_detail", args=[estate.stale.pk])}"' in html
    assert "version 1&#x27;s originator-usage period ended on 2026-09-25" in html


def test_a_control_without_checks_says_so_in_plain_words(estate: Any) -> None:
    page = web_client(estate.erin).get("/compliance/pci-dss/controls/3.5.1/")
    assert b"Not assessed automatically." in page.content
    assert b"Assess it by hand" in page.content


def test_the_check_page_explains_what_is_checked_and_lists_offenders(estate: Any) -> None:
    html = web_client(estate.erin).get(CHECK).content.decode()
    assert "Every key in state active has a primary version" in html
    assert ">stale<" in html
    assert 'href="/compliance/pci-dss/controls/3.7.4/"' in html


def test_the_control_list_filters_by_status_and_phase(estate: Any) -> None:
    client = web_client(estate.erin)
    failing = client.get(PCI, {"status": "fail"}).content.decode()
    assert "controls/3.7.4/" in failing
    assert "controls/3.5.1/" not in failing
    rotation = client.get(PCI, {"phase": "rotation"}).content.decode()
    assert "controls/3.7.4/" in rotation
    assert "controls/3.7.8/" not in rotation


def test_a_bad_filter_value_is_a_sentence_next_to_the_field(estate: Any) -> None:
    page = web_client(estate.erin).get(PCI, {"status": "great", "phase": "<script>"})
    assert page.status_code == 200
    assert b"Choose a status from the list." in page.content
    assert b"Choose a lifecycle phase from the list." in page.content
    assert b"<script>" not in page.content


# --- Downloads ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type", "start"),
    [
        ("csv", "text/csv; charset=utf-8", b"framework,control_id"),
        ("json", "application/json", b"{"),
        ("pdf", "application/pdf", b"%PDF-"),
        ("oscal", "application/json", b'{\n  "assessment-results"'),
    ],
)
def test_every_format_downloads_from_the_dashboard_and_is_audited(
    estate: Any, fmt: str, content_type: str, start: bytes
) -> None:
    response = web_client(estate.erin).get(f"/compliance/pci-dss/report/{fmt}/")
    assert response.status_code == 200
    assert response["Content-Type"] == content_type
    assert response["Content-Disposition"].startswith('attachment; filename="kms-compliance-pci-dss-')
    assert response.content.startswith(start)
    event = AuditEvent.objects.get(action="compliance.report_exported")
    assert (event.actor, event.via, event.details["format"]) == ("erin", "web", fmt)


# --- The review action ----------------------------------------------------------------------------


def test_an_auditor_marks_the_audit_review_done(estate: Any) -> None:
    client = web_client(estate.erin)
    assert b"Mark the audit review done" in client.get(INDEX).content

    response = client.post(REVIEW, {"note": "looked at the failed sign-ins", "next": PCI}, follow=True)

    assert response.redirect_chain[-1][0] == PCI
    assert b"Audit review recorded" in response.content
    event = AuditEvent.objects.get(action="audit.reviewed")
    assert (event.actor, event.details["note"]) == ("erin", "looked at the failed sign-ins")


def test_the_review_refuses_others_a_get_a_long_note_and_a_foreign_next(estate: Any) -> None:
    officer = web_client(estate.olivia)
    assert b"Mark the audit review done" not in officer.get(INDEX).content
    assert officer.post(REVIEW, {"note": ""}).status_code == 403
    auditor = web_client(estate.erin)
    assert auditor.get(REVIEW).status_code == 405
    long_note = auditor.post(REVIEW, {"note": "x" * 1001}, follow=True)
    assert b"Keep the note under 1000 characters." in long_note.content
    assert not AuditEvent.objects.filter(action="audit.reviewed").exists()
    foreign = auditor.post(REVIEW, {"next": "https://evil.example/"})
    assert foreign["Location"] == INDEX


# --- Cost -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "queries"), [(INDEX, 43), (PCI, 41), (CONTROL, 17)])
def test_dashboard_queries_stay_flat_from_10_to_1000_keys(
    clock: Any, cast: Any, django_assert_num_queries: Any, url: str, queries: int
) -> None:
    client = web_client(cast.erin)
    client.get(url)  # warm the session
    bulk_keys(10, kms=cast.kms, owner=cast.alice, now=clock.now(), prefix="small")
    with django_assert_num_queries(queries):
        assert client.get(url).status_code == 200
    bulk_keys(990, kms=cast.kms, owner=cast.alice, now=clock.now(), prefix="large")
    with django_assert_num_queries(queries):
        assert client.get(url).status_code == 200
