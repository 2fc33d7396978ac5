"""The key's page lists its backups in a real Chromium (screenshot: test-artifacts/screenshots/backups-key-page.png)."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from lifecycle.models import Backup, KeyVersion
from lifecycle.states import KeyState
from tests.compliance.helpers import orm_key
from tests.ui.conftest import CspWatcher, shot, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_key_administrator_sees_every_backup_of_the_key_and_their_restore_tests(
    live_server: Any, new_context: Any, kms: Any, alice: Any
) -> None:
    now = timezone.now()
    kek = orm_key("backup-kek", kms=kms, owner=alice, now=now, usage="wrap_unwrap", kcv="0badc0")
    key = orm_key("payments", kms=kms, owner=alice, now=now, kcv="a1b2c3")
    first = key.versions.get()
    first.state = KeyState.DEACTIVATED
    first.save(update_fields=["state"])
    second = KeyVersion.objects.create(
        key=key,
        number=2,
        state=KeyState.ACTIVE,
        hsm=kms.hsm,
        cka_id=secrets.token_hex(16),
        kcv="d4e5f6",
        extractable=True,
        created_at=now,
        generated_at=now,
    )
    key.primary_version = second
    key.save(update_fields=["primary_version"])
    kek_version = kek.versions.get()
    day = dt.timedelta(days=1)
    Backup.objects.create(
        version=first, kek_version=kek_version, wrapped="AAAA", kcv=first.kcv, created_at=now - 3 * day,
        verified_at=now - 2 * day, verify_failed_at=now - day, verify_error="the stored blob is damaged",
    )  # fmt: skip
    Backup.objects.create(
        version=second, kek_version=kek_version, wrapped="AAAA", kcv="d4e5f6", created_at=now, verified_at=now
    )

    page = new_context().new_page()
    watcher = CspWatcher(page)
    sign_in(page, live_server.url, alice)
    page.goto(f"{live_server.url}/keys/{key.pk}/")
    backups = page.get_by_role("region", name="Backups")
    expect(backups.locator("tbody tr")).to_have_count(2)
    expect(backups.locator("tbody tr").first).to_contain_text("v2")
    expect(backups.locator("tbody tr").first).to_contain_text("Live")
    expect(backups.locator("tbody tr").last).to_contain_text("Restore test failed")
    expect(backups.get_by_role("link", name="Back up…")).to_be_visible()
    shot(page, "backups-key-page")
    assert watcher.errors == []


def test_a_holder_who_downloads_their_share_is_told_it_is_downloading(
    live_server: Any, new_context: Any, cast: Any, clock: Any, escrow: Any
) -> None:
    from tests.ui.conftest import code_at

    bob = cast.bob
    clock.advance(seconds=90)  # past the codes bob used to approve the ceremony
    page = new_context(accept_downloads=True).new_page()
    watcher = CspWatcher(page)
    sign_in(page, live_server.url, bob)
    share = escrow.shares.get(holder=bob)
    page.goto(f"{live_server.url}/backups/escrow/{escrow.pk}/shares/{share.index}/")
    page.get_by_label("Download it once as a text file").check()
    page.get_by_label("One-time code").fill(code_at(bob, 1))
    with page.expect_download() as download:
        page.get_by_role("button", name="Take my share").click()
    assert download.value.suggested_filename == f"kms-share-{str(escrow.pk)[:8]}-{share.index}.txt"
    expect(page.get_by_role("status")).to_contain_text("Your share is downloading")
    expect(page.get_by_role("button", name="Take my share")).to_be_hidden()
    shot(page, "backups-share-downloaded")
    assert watcher.errors == []
