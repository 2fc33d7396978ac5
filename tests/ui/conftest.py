"""Fixtures of the console tests: Playwright on Debian's Chromium, sign-in helpers, screenshots.

Browser tests (`@pytest.mark.browser`) drive /usr/bin/chromium through Playwright's
`executable_path` (no `playwright install`: that download cannot work here) against pytest-django's
`live_server`. When Chromium is missing they are skipped, unless KMS_REQUIRE_SERVICES is set: then
they fail, so CI cannot pass without them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.conftest import PASSWORD, require_services

CHROMIUM = Path(os.environ.get("KMS_CHROMIUM", "/usr/bin/chromium"))
# Keep Chromium off the network and away from features a headless test does not need.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch arguments, pointed at Debian's Chromium."""
    if not CHROMIUM.exists():
        message = f"the browser tests need Chromium at {CHROMIUM} (apt install chromium)"
        if require_services():
            pytest.fail(message)
        pytest.skip(message)
    # Playwright's sync API runs an event loop in the test thread; the ORM calls of the tests and
    # of the live server are still synchronous.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_FLAGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": {"width": 1360, "height": 900}, "locale": "en-GB"}


def code_at(user: Any, offset: int = 0) -> str:
    """The user's TOTP code `offset` time steps from now.

    django-otp accepts the codes of the neighbouring steps and refuses a step it has seen, so a
    person who signed in with the current code (offset 0) approves with the next one (offset 1)
    instead of waiting 30 seconds.
    """
    device = TOTPDevice.objects.get(user=user, confirmed=True)
    return f"{totp(device.bin_key, device.step, device.t0, device.digits, device.drift + offset):0{device.digits}d}"


def shot(page: Any, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/screenshots/ (kept by CI, ignored by git)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Any, base_url: str, user: Any, *, otp_offset: int = 0, screenshots: bool = False) -> None:
    """Password, then the TOTP code; ends on the dashboard."""
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Username").fill(user.get_username())
    page.get_by_label("Password").fill(PASSWORD)
    if screenshots:
        shot(page, "01-sign-in")
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(re.compile(r"/accounts/otp/"))
    page.get_by_label("Code from your authenticator app").fill(code_at(user, otp_offset))
    if screenshots:
        shot(page, "02-one-time-code")
    page.get_by_role("button", name="Verify and continue").click()
    page.wait_for_url(f"{base_url}/")


class CspWatcher:
    """Collects the browser console's errors (a CSP violation shows up there) for a page."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _on_console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)
