"""The new user's follow-up in a real Chromium: the navigation fits one line at 1280 px for the
roles with the most links, a suspension's mandatory review is found from the key page and its
outcome shows there once a custodian disputes it, and a POST-only address opened in the browser
shows a page. Screenshots land in test-artifacts/screenshots/ (look at them)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from approvals.models import ApprovalRequest, RequestState
from approvals.services import decide, open_request
from lifecycle.models import Key
from lifecycle.states import KeyState
from tests.conftest import make_user
from tests.ui.conftest import CspWatcher, code_at, shot, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

REQUEST_URL = re.compile(r"/requests/[0-9a-f-]{36}/$")


def make_key(alice: Any, approvers: list[Any], name: str) -> Key:
    """An active AES key through the engine. The approvers use their current codes: the people who
    then sign in to the browser must be others (a code is accepted once)."""
    req = open_request(
        operation="generate",
        requester=alice,
        justification="A key for the follow-up tests.",
        parameters={"name": name, "algorithm": "AES-256", "usage": "encrypt_decrypt"},
    )
    for approver in approvers:
        decide(request_id=req.pk, approver=approver, decision="approve", otp=code_at(approver), digest=req.digest)
    return Key.objects.get(name=name)


@pytest.mark.parametrize("who", ["erin", "olivia"])
def test_the_navigation_fits_one_line_at_1280_px(
    who: str, live_server: Any, new_context: Any, request: pytest.FixtureRequest
) -> None:
    user = request.getfixturevalue(who)
    page = new_context().new_page()
    page.set_viewport_size({"width": 1280, "height": 900})  # the reporter's window
    csp = CspWatcher(page)
    sign_in(page, live_server.url, user)
    links = page.locator(".nav a")
    expect(links).to_have_count(10)  # Dashboard … Compliance, and Audit for these two roles
    tops = {round(box["y"]) for box in (links.nth(i).bounding_box() for i in range(links.count())) if box}
    assert len(tops) == 1, f"the navigation wraps onto {len(tops)} lines"
    menu = page.locator(".user-menu").bounding_box()
    assert menu is not None and menu["x"] + menu["width"] <= 1280
    assert page.locator(".topbar").bounding_box()["height"] < 70
    if who == "erin":
        expect(page.get_by_role("heading", name="Recent audit activity")).to_be_visible()
        expect(page.get_by_role("heading", name="Waiting for your decision")).to_have_count(0)
        shot(page, "40-dashboard-auditor-1280")
    else:
        shot(page, "41-dashboard-security-officer-1280")
    assert csp.errors == []


def test_a_suspensions_review_is_found_from_the_key_page_and_its_outcome_shows_there(
    live_server: Any, new_context: Any, alice: Any, bob: Any, carol: Any, dave: Any
) -> None:
    key = make_key(alice, [dave, make_user("frank", {"custodian"})], "orders")
    base = live_server.url

    # bob, custodian, suspends the key at once from its page.
    page_bob = new_context().new_page()
    csp = CspWatcher(page_bob)
    sign_in(page_bob, base, bob)
    page_bob.goto(f"{base}/keys/{key.pk}/")
    page_bob.get_by_role("link", name="Suspend").click()
    page_bob.get_by_label("Justification").fill("Unexpected decrypt calls from an unknown host.")
    page_bob.get_by_role("button", name="Suspend now").click()
    page_bob.wait_for_url(f"{base}/keys/{key.pk}/")
    expect(page_bob.locator("#key-state")).to_have_text("Suspended")
    expect(page_bob.locator("#open-requests")).to_contain_text("Review of the immediate suspension")
    expect(page_bob.locator('#versions [data-version="1"]')).to_contain_text("(key suspended)")
    shot(page_bob, "42-key-suspended-review-pending")

    # The review is bob's own request (he suspended): the page says plainly he cannot decide it.
    page_bob.locator("#open-requests").get_by_role("link", name="Review of the immediate suspension").click()
    page_bob.wait_for_url(REQUEST_URL)
    expect(page_bob.locator("#requester-note")).to_contain_text("You cannot approve your own request")
    shot(page_bob, "43-own-request-note")

    # carol disputes it; the decision lands back on the request page (POST-redirect-GET).
    review = ApprovalRequest.objects.get(operation="review")
    page_carol = new_context().new_page()
    sign_in(page_carol, base, carol)
    page_carol.goto(f"{base}/requests/{review.pk}/")
    page_carol.get_by_label("Your one-time code").fill(code_at(carol, 1))
    page_carol.get_by_label("Comment").fill("The host belongs to the new batch job; the suspension was not needed.")
    page_carol.get_by_role("button", name="Reject").click()
    page_carol.wait_for_url(f"{base}/requests/{review.pk}/")
    expect(page_carol.locator(".messages")).to_contain_text("You rejected the request")
    review.refresh_from_db()
    assert review.state == RequestState.REJECTED

    # The key page now tells the story: suspended, and the suspension disputed, with why.
    page_bob.goto(f"{base}/keys/{key.pk}/")
    timeline = page_bob.locator("#timeline")
    expect(timeline).to_contain_text("Review disputed")
    expect(timeline).to_contain_text("Disputed by carol")
    expect(timeline).to_contain_text("the suspension was not needed")
    expect(page_bob.locator("#open-requests")).to_have_count(0)
    expect(page_bob.locator("#review-status")).to_contain_text("The reviewers disputed this suspension")
    shot(page_bob, "44-key-review-disputed")
    assert Key.objects.get(pk=key.pk).state == KeyState.SUSPENDED
    assert csp.errors == []


def test_a_post_only_address_opened_in_the_browser_shows_a_page(
    live_server: Any, new_context: Any, olivia: Any, kms: Any
) -> None:
    page = new_context().new_page()
    csp = CspWatcher(page)
    sign_in(page, live_server.url, olivia)
    # Typed into the address bar (no referer): the way out is the dashboard.
    response = page.goto(f"{live_server.url}/hsms/default/retire/")
    assert response is not None and response.status == 405
    expect(page.get_by_role("heading", name="This address is not a page")).to_be_visible()
    expect(page.locator("#method-not-allowed")).to_contain_text("It only takes a form submission (POST)")
    expect(page.get_by_role("link", name="Go to the dashboard")).to_be_visible()
    shot(page, "45-method-not-allowed")
    # The browser logs the 405 status itself; nothing else (no CSP violation) may appear.
    assert [error for error in csp.errors if "status of 405" not in error] == []
