"""A compliance officer in a real Chromium: opens the dashboard, drills down, downloads every format,
and records the audit review. Screenshots go to test-artifacts/screenshots/compliance-*.png.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from audit.models import AuditEvent
from audit.services import sign_checkpoint
from compliance import services
from tests.ui.conftest import CspWatcher, shot, sign_in

from .helpers import orm_key, security_failure

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]


def test_a_compliance_officer_sees_where_the_estate_stands_and_downloads_every_report(
    live_server: Any, new_context: Any, kms: Any, alice: Any, bob: Any, erin: Any
) -> None:
    now = timezone.now()
    orm_key("payments", kms=kms, owner=alice, now=now)
    orm_key("stale-tokens", kms=kms, owner=alice, now=now, activated_days_ago=800)
    security_failure("auth.login_failed", "mallory")
    for days_ago in (3, 2, 1):
        services.take_snapshot(now=now - dt.timedelta(days=days_ago))
    sign_checkpoint()
    base = live_server.url
    page = new_context().new_page()
    watcher = CspWatcher(page)

    sign_in(page, base, erin)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Compliance").click()
    page.wait_for_url(f"{base}/compliance/")
    expect(page.get_by_role("heading", name="PCI DSS 4.0.1")).to_be_visible()
    expect(page.get_by_role("heading", name="Evidence checks")).to_be_visible()
    shot(page, "compliance-1-dashboard")

    page.locator("#fw-pci-dss").locator("xpath=../..").get_by_role(
        "link", name=re.compile("Controls and reports")
    ).click()
    page.wait_for_url(f"{base}/compliance/pci-dss/")
    expect(page.locator("svg.compliance-trend rect").first).to_be_attached()
    shot(page, "compliance-2-framework")

    page.get_by_role("link", name="3.7.4", exact=True).click()
    page.wait_for_url(f"{base}/compliance/pci-dss/controls/3.7.4/")
    expect(page.get_by_role("link", name="stale-tokens", exact=True)).to_be_visible()
    shot(page, "compliance-3-control")

    page.goto(f"{base}/compliance/pci-dss/")
    downloads = {}
    for label in ("CSV", "JSON", "PDF", "OSCAL"):
        with page.expect_download() as info:
            page.locator(".compliance-downloads").get_by_role("link", name=label, exact=True).click()
        download = info.value
        downloads[label] = (download.suggested_filename, Path(download.path()).read_bytes())
    assert downloads["PDF"][0].endswith(".pdf") and downloads["PDF"][1].startswith(b"%PDF-")
    assert downloads["CSV"][1].count(b"\r\n") == 1 + 33
    assert json.loads(downloads["OSCAL"][1])["assessment-results"]["results"]
    assert json.loads(downloads["JSON"][1])["framework"]["slug"] == "pci-dss"
    assert AuditEvent.objects.filter(action="compliance.report_exported", actor="erin").count() == 4

    page.goto(f"{base}/compliance/")
    page.get_by_label("Note").fill("Went through the failed sign-ins: one mistyped password.")
    page.get_by_role("button", name="Mark the audit review done").click()
    expect(page.get_by_role("status")).to_contain_text("Audit review recorded")
    shot(page, "compliance-4-reviewed")
    assert watcher.errors == []


def test_a_key_administrator_sees_only_the_summary(live_server: Any, new_context: Any, kms: Any, alice: Any) -> None:
    page = new_context().new_page()
    sign_in(page, live_server.url, alice)
    page.goto(f"{live_server.url}/compliance/pci-dss/")
    expect(page.get_by_text("You see the summary.")).to_be_visible()
    expect(page.locator(".compliance-downloads")).to_have_count(0)
    shot(page, "compliance-5-summary-only")
