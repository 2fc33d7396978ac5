"""The console in a real Chromium: custodians approve a key in their own browsers, a requester is
refused, a new custodian enrols TOTP from the QR page, and every main page renders under the CSP.

Each test saves screenshots under test-artifacts/screenshots/ (look at them: a page a custodian
would find confusing is a defect).
"""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from django.utils import timezone
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice
from playwright.sync_api import expect

from accounts.models import Acknowledgement
from approvals.models import Decision, RequestState
from approvals.services import decide, open_request
from lifecycle.models import Job, JobKind, JobStatus, Key
from lifecycle.states import KeyState
from tests.conftest import PASSWORD, make_user
from tests.ui.conftest import CspWatcher, code_at, shot, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

REQUEST_URL = re.compile(r"/requests/[0-9a-f-]{36}/$")


def approve_in_browser(page: Any, base_url: str, approver: Any, *, screenshot_prefix: str = "") -> None:
    """Sign in, find the request in the inbox, approve it with the next one-time code."""
    sign_in(page, base_url, approver)
    expect(page.locator("#waiting-title")).to_be_visible()
    expect(page.get_by_role("region", name="Waiting for your decision")).to_contain_text("Generate a key")
    if screenshot_prefix:
        shot(page, f"{screenshot_prefix}-dashboard")
    page.get_by_role("navigation", name="Main").get_by_role("link", name=re.compile("^Requests")).click()
    expect(page.get_by_role("link", name="Waiting for you")).to_have_class(re.compile("current"))
    if screenshot_prefix:
        shot(page, f"{screenshot_prefix}-inbox")
    page.locator("#requests").get_by_role("link", name="Generate a key").click()
    page.wait_for_url(REQUEST_URL)
    expect(page.locator("#request-description")).to_contain_text("Generate a new AES-256 key named 'payments-2026'")
    if screenshot_prefix:
        shot(page, f"{screenshot_prefix}-request")
    page.get_by_label("Your one-time code").fill(code_at(approver, 1))
    page.get_by_role("button", name="Approve").click()
    page.wait_for_url(REQUEST_URL)


def test_two_custodians_approve_a_new_aes_key_each_in_their_own_browser(
    live_server: Any, new_context: Any, alice: Any, bob: Any, carol: Any
) -> None:
    base = live_server.url
    # alice, key administrator, asks for the key.
    page_alice = new_context().new_page()
    csp = CspWatcher(page_alice)
    sign_in(page_alice, base, alice, screenshots=True)
    shot(page_alice, "03-dashboard-key-admin")
    page_alice.get_by_role("link", name="Request a new key").first.click()
    page_alice.get_by_label("Name").fill("payments-2026")
    page_alice.get_by_label("Algorithm").select_option("AES-256")
    page_alice.get_by_label("Usage").select_option("encrypt_decrypt")
    page_alice.get_by_label("Tags").fill("payments, pci")
    page_alice.get_by_label("Justification").fill("Card data encryption key for the 2026 payments platform.")
    shot(page_alice, "04-request-a-key")
    page_alice.get_by_role("button", name="Send the request for approval").click()
    page_alice.wait_for_url(REQUEST_URL)
    expect(page_alice.locator("#request-state")).to_have_text("Pending")
    expect(page_alice.locator(".messages")).to_contain_text("It needs 2 approvals")
    shot(page_alice, "05-request-pending")

    # bob and carol, custodians, each in their own browser context.
    page_bob = new_context().new_page()
    approve_in_browser(page_bob, base, bob, screenshot_prefix="06-custodian")
    expect(page_bob.locator(".messages")).to_contain_text("You approved the request (1 of 2)")
    expect(page_bob.locator("#approval-count")).to_have_text("1 of 2")

    page_carol = new_context().new_page()
    approve_in_browser(page_carol, base, carol)
    expect(page_carol.locator(".messages")).to_contain_text("carried out")
    expect(page_carol.locator("#request-state")).to_have_text("Executed")
    shot(page_carol, "07-request-executed")

    # The approved job ran (eagerly, after the approving transaction committed): the key is active.
    key = Key.objects.select_related("primary_version").get(name="payments-2026")
    assert key.state == KeyState.ACTIVE
    assert re.fullmatch(r"[0-9a-f]{6}", key.primary_version.kcv)
    page_alice.reload()
    expect(page_alice.locator("#request-state")).to_have_text("Executed")
    page_alice.get_by_role("link", name="Open the key").click()
    expect(page_alice.locator("#key-state")).to_have_text("Active")
    expect(page_alice.locator("#versions [data-kcv]").first).to_have_text(key.primary_version.kcv)
    expect(page_alice.locator(".timeline")).to_contain_text("Approved by bob")
    expect(page_alice.locator(".timeline")).to_contain_text("Approved by carol")
    shot(page_alice, "08-key-active")
    assert csp.errors == []


def test_the_requester_is_offered_no_way_to_approve_their_own_request(
    live_server: Any, new_context: Any, alice: Any, bob: Any
) -> None:
    req = open_request(
        operation="generate",
        requester=alice,
        justification="A key for the refusal test.",
        parameters={"name": "self-approval", "algorithm": "AES-256", "usage": "encrypt_decrypt"},
    )
    page = new_context().new_page()
    sign_in(page, live_server.url, alice)
    page.goto(f"{live_server.url}/requests/{req.pk}/")
    expect(page.locator("#requester-note")).to_contain_text("You cannot approve your own request")
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    expect(page.get_by_label("Your one-time code")).to_have_count(0)
    expect(page.locator("#request-state")).to_have_text("Pending")
    shot(page, "09-self-approval-refused")
    req.refresh_from_db()
    assert req.state == RequestState.PENDING
    assert not Decision.objects.filter(request=req).exists()


def test_a_new_custodian_enrols_totp_from_the_qr_page_then_accepts_the_responsibilities(
    live_server: Any, new_context: Any, kms: Any
) -> None:
    nina = make_user("nina", {"custodian"}, totp=False, acknowledged=False)
    page = new_context().new_page()
    csp = CspWatcher(page)
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Username").fill("nina")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(re.compile(r"/accounts/enrol/"))
    expect(page.get_by_role("img", name="QR code for your authenticator app")).to_be_visible()
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    shot(page, "10-enrol-totp")
    code = f"{totp(base64.b32decode(secret), 30, 0, 6, 0):06d}"
    page.get_by_label("Code from your authenticator app").fill(code)
    page.get_by_role("button", name="Confirm and continue").click()
    # A custodian without a current acknowledgement is taken to the responsibilities text next.
    page.wait_for_url(re.compile(r"/accounts/acknowledge/"))
    expect(page.locator(".responsibilities")).to_contain_text("dual control")
    shot(page, "11-acknowledge-responsibilities")
    page.get_by_label("I have read these responsibilities and accept them.").check()
    page.get_by_role("button", name="Accept and continue").click()
    page.wait_for_url(f"{live_server.url}/")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    assert TOTPDevice.objects.filter(user=nina, confirmed=True).count() == 1
    assert Acknowledgement.objects.filter(user=nina).count() == 1
    assert csp.errors == []


def test_every_main_page_renders_under_the_content_security_policy(
    live_server: Any, new_context: Any, alice: Any, bob: Any, carol: Any, olivia: Any
) -> None:
    req = open_request(
        operation="generate",
        requester=alice,
        justification="Signing key for release artefacts.",
        parameters={"name": "release-signing", "algorithm": "EC-P256", "usage": "sign_verify", "tags": ["release"]},
    )
    for approver in (bob, carol):
        decide(request_id=req.pk, approver=approver, decision="approve", otp=code_at(approver), digest=req.digest)
    key = Key.objects.get(name="release-signing")
    open_request(
        operation="rotate", requester=alice, justification="Yearly rotation.", target_id=str(key.pk), parameters={}
    )
    page = new_context().new_page()
    csp = CspWatcher(page)
    sign_in(page, live_server.url, olivia)
    shot(page, "20-dashboard-security-officer")
    pages = {
        "21-keys": "/keys/",
        "22-key-detail": f"/keys/{key.pk}/",
        "23-requests-all": "/requests/?view=all",
        "24-policies": "/policies/",
        "25-policy-standard": "/policies/standard/",
        "26-policy-propose": "/policies/standard/propose/",
        "27-custodians": "/custodians/",
        "28-hsms": "/hsms/",
        "29-jobs": "/jobs/",
        "30-audit": "/audit/",
    }
    for name, path in pages.items():
        response = page.goto(f"{live_server.url}{path}")
        assert response is not None and response.status == 200, path
        shot(page, name)
    page.get_by_role("button", name="Verify the whole chain").click()
    expect(page.locator("#verification")).to_contain_text("The chain verifies")
    shot(page, "31-audit-verified")
    assert csp.errors == []


def test_a_job_page_updates_itself_when_the_job_finishes(
    live_server: Any, new_context: Any, alice: Any, bob: Any, carol: Any, dave: Any
) -> None:
    req = open_request(
        operation="generate",
        requester=alice,
        justification="A key whose rotation we watch.",
        parameters={"name": "watched", "algorithm": "AES-256", "usage": "encrypt_decrypt"},
    )
    for approver in (bob, carol):
        decide(request_id=req.pk, approver=approver, decision="approve", otp=code_at(approver), digest=req.digest)
    key = Key.objects.get(name="watched")
    # A job the worker has not picked up yet (no worker runs here: the test plays its part).
    job = Job.objects.create(kind=JobKind.ROTATE, key=key, created_at=timezone.now())
    page = new_context().new_page()
    csp = CspWatcher(page)
    sign_in(page, live_server.url, dave)  # bob and carol used their current codes above
    page.goto(f"{live_server.url}/jobs/{job.pk}/")
    expect(page.locator(f'[data-job-id="{job.pk}"]')).to_have_text("Queued")
    expect(page.locator(".live")).to_be_visible()
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED, finished_at=timezone.now())
    # The page polls /jobs/status/ and reloads itself: no click, no refresh by the test.
    expect(page.locator(f'[data-job-id="{job.pk}"]')).to_have_text("Succeeded", timeout=15_000)
    expect(page.locator(".live")).to_have_count(0)
    assert csp.errors == []
