"""The backup pages: who sees what, the share hand-off in the browser, share entry, request forms."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from approvals.models import ApprovalRequest
from lifecycle.hsm import default_backend
from lifecycle.models import EscrowCeremony, Restore, RestoreShare, RestoreState
from tests.backups.conftest import back_up, open_restore
from tests.conftest import fresh_otp, web_client
from tests.lifecycle.helpers import generate_key, on_commit, run_operation

pytestmark = pytest.mark.django_db


def test_the_overview_shows_the_kek_its_holders_and_backups(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony
) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="payments")
    back_up(key, cast, clock)
    for user in (cast.alice, cast.bob, cast.olivia, cast.erin):
        response = web_client(user).get(reverse("backups:index"))
        assert response.status_code == 200
        body = response.content.decode()
        assert "backup-kek" in body and "2 of 3 custodians" in body and "payments" in body
    assert "Take it now".lower() in web_client(cast.bob).get(reverse("backups:index")).content.decode().lower()


def test_outsiders_and_anonymous_visitors_are_kept_out(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony
) -> None:
    assert web_client(cast.mallory).get(reverse("backups:index")).status_code == 403
    from django.test import Client

    response = Client().get(reverse("backups:index"))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_overview_query_count_does_not_grow_with_backups(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony, django_assert_num_queries: Any
) -> None:
    for name in ("a", "b", "c"):
        back_up(generate_key(cast.alice, cast.approvers, clock, name=name), cast, clock)
    client = web_client(cast.erin)
    client.get(reverse("backups:index"))  # warm the session and the middleware's caches
    with django_assert_num_queries(17) as few:
        client.get(reverse("backups:index"))
    for name in ("d", "e", "f", "g"):
        back_up(generate_key(cast.alice, cast.approvers, clock, name=name), cast, clock)
    with django_assert_num_queries(len(few.captured_queries)):
        client.get(reverse("backups:index"))


def test_a_holder_takes_their_share_once_in_the_browser(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony
) -> None:
    share = escrow.shares.get(holder=cast.bob)
    url = reverse("backups:share_retrieve", args=[escrow.pk, share.index])
    client = web_client(cast.bob)
    assert client.get(url).status_code == 200
    wrong = client.post(url, {"otp": "000000", "delivery": "show"})
    assert wrong.status_code == 200 and "kms-share:" not in wrong.content.decode()
    assert "one-time password is wrong" in wrong.content.decode()
    clock.advance(seconds=2)  # past django-otp's back-off after a failure
    shown = client.post(url, {"otp": fresh_otp(cast.bob, clock), "delivery": "show"})
    assert shown.status_code == 200 and "no-store" in shown["Cache-Control"]
    assert f"kms-share:{escrow.pk}:{share.index}:" in shown.content.decode()
    again = client.post(url, {"otp": fresh_otp(cast.bob, clock), "delivery": "show"})
    assert "kms-share:" not in again.content.decode() and "took this share already" in again.content.decode()


def test_a_share_can_be_downloaded_once_instead(cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony) -> None:
    share = escrow.shares.get(holder=cast.carol)
    url = reverse("backups:share_retrieve", args=[escrow.pk, share.index])
    response = web_client(cast.carol).post(url, {"otp": fresh_otp(cast.carol, clock), "delivery": "download"})
    assert response["Content-Disposition"].startswith("attachment;")
    assert response.content.decode().startswith(f"kms-share:{escrow.pk}:")


def test_others_cannot_take_a_share(cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony) -> None:
    share = escrow.shares.get(holder=cast.bob)
    url = reverse("backups:share_retrieve", args=[escrow.pk, share.index])
    # another custodian: refused by the service, next to the form
    response = web_client(cast.carol).post(url, {"otp": fresh_otp(cast.carol, clock), "delivery": "show"})
    assert "held by another custodian" in response.content.decode() and "kms-share:" not in response.content.decode()
    # no custodian role at all: no page
    for user in (cast.alice, cast.erin, cast.mallory):
        assert web_client(user).post(url, {"otp": "123456", "delivery": "show"}).status_code == 403
    assert web_client(cast.bob).get(reverse("backups:share_retrieve", args=[escrow.pk, 9])).status_code == 404
    share.refresh_from_db()
    assert share.retrieved_at is None


def test_custodians_enter_shares_in_the_browser(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony, shares: dict[str, str]
) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="payments")
    backup = back_up(key, cast, clock)
    default_backend().destroy(key.primary_version.cka_id_bytes)
    req = open_restore(key, backup, cast, clock)
    restore = Restore.objects.get(request=req)
    url = reverse("backups:restore", args=[restore.pk])
    assert web_client(cast.erin).get(url).status_code == 200
    # Not a custodian: refused before anything is read.
    assert web_client(cast.alice).post(url, {"share": shares["bob"], "otp": "123456"}).status_code == 403
    bad = web_client(cast.bob).post(url, {"share": shares["bob"][:-2] + "00", "otp": fresh_otp(cast.bob, clock)})
    assert bad.status_code == 200 and "does not match" in bad.content.decode()
    with on_commit():
        assert (
            web_client(cast.bob).post(url, {"share": shares["bob"], "otp": fresh_otp(cast.bob, clock)}).status_code
            == 302
        )
        assert (
            web_client(cast.dave).post(url, {"share": shares["dave"], "otp": fresh_otp(cast.dave, clock)}).status_code
            == 302
        )
    restore.refresh_from_db()
    assert restore.state == RestoreState.RESTORED
    assert RestoreShare.objects.filter(restore=restore).count() == 2


def test_request_forms_open_requests_and_show_refusals_next_to_the_field(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony
) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="payments")
    client = web_client(cast.alice)
    response = client.post(reverse("backups:backup_new", args=[key.pk]), {"justification": "DR"})
    assert response.status_code == 302
    assert ApprovalRequest.objects.filter(operation="backup", target_id=str(key.pk)).exists()
    refused = client.post(reverse("backups:backup_new", args=[key.pk]), {"justification": "DR", "version": 9})
    assert refused.status_code == 200 and "no version 9" in refused.content.decode()
    export = client.post(
        reverse("backups:export_new", args=[key.pk]),
        {"justification": "partner", "recipient": "Acme", "recipient_public_key": "nope"},
    )
    # The standard policy does not allow export: the refusal shows above the form.
    assert export.status_code == 200 and "does not allow wrapped export" in export.content.decode()
    missing = client.post(reverse("backups:escrow_new"), {"justification": "x", "threshold": 2})
    assert missing.status_code == 200 and "field-error" in missing.content.decode()
    assert web_client(cast.bob).get(reverse("backups:backup_new", args=[key.pk])).status_code == 403
    assert web_client(cast.erin).get(reverse("backups:escrow_new")).status_code == 403
    ok = web_client(cast.olivia).post(
        reverse("backups:escrow_new"),
        {
            "kek": str(escrow.kek_version.key_id),
            "custodians": [str(cast.bob.pk), str(cast.carol.pk)],
            "threshold": 2,
            "justification": "renew",
        },
    )
    assert ok.status_code == 302
    assert ApprovalRequest.objects.filter(operation="escrow", requester=cast.olivia).exists()


@pytest.mark.usefixtures("import_key")
def test_the_import_key_page_publishes_the_public_key(cast: SimpleNamespace, clock: Any) -> None:
    response = web_client(cast.alice).get(reverse("backups:import_key"))
    assert response.status_code == 200
    assert "-----BEGIN PUBLIC KEY-----" in response.content.decode()


# --- The key's page lists its backups -------------------------------------------------------------


def key_page(client: Any, key: Any) -> tuple[str, list[str]]:
    """The key page's HTML and the SQL it ran."""
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("lifecycle:key_detail", args=[key.pk]))
    assert response.status_code == 200
    return response.content.decode(), [query["sql"] for query in queries.captured_queries]


def test_the_key_page_lists_the_backups_of_every_version_in_one_query(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony, django_assert_num_queries: Any
) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="payments")
    first = back_up(key, cast, clock)
    client = web_client(cast.alice)
    client.get(reverse("lifecycle:key_detail", args=[key.pk]))  # warm the session
    body, queries = key_page(client, key)
    assert first.kcv in body and reverse("backups:backup_new", args=[key.pk]) in body
    # The backups card costs one query: every backup of every version, joined with its version and KEK.
    [backups_query] = [sql for sql in queries if '"lifecycle_backup"' in sql]
    assert '"lifecycle_keyversion"' in backups_query and '"wrapped"' not in backups_query.split(" FROM ")[0]

    # A rotation makes version 2, which is backed up too: one more row, not one more query. (The
    # rest of the page belongs to lifecycle; its own count is pinned where that page is tested.)
    run_operation("rotate", key, cast.alice, cast.approvers, clock)
    second = back_up(key, cast, clock)
    assert second.version.number == 2 and first.version.number == 1
    with django_assert_num_queries(len(queries)):
        response = client.get(reverse("lifecycle:key_detail", args=[key.pk]))
    section = response.content.decode().split('id="backups-title"')[1]
    assert section.index(second.kcv) < section.index(first.kcv)  # newest first
    assert "v2" in section and "v1" in section and "No backups." not in section


def test_the_key_page_says_when_there_is_no_backup_and_offers_it_to_key_admins_only(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony
) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="payments")
    link = reverse("backups:backup_new", args=[key.pk])
    for user, offered in ((cast.alice, True), (cast.erin, False), (cast.bob, False)):
        body = web_client(user).get(reverse("lifecycle:key_detail", args=[key.pk])).content.decode()
        assert "No backups." in body
        assert (link in body) is offered


def test_the_overview_says_a_newer_ceremony_is_handing_off_and_the_old_one_still_recovers(
    cast: SimpleNamespace, clock: Any, kek: Any, escrow: EscrowCeremony
) -> None:
    from tests.backups.conftest import hold_escrow, take_shares

    take_shares(escrow, clock)
    newer = hold_escrow(kek, cast, clock, holders=("bob", "carol"), threshold=2)
    page = web_client(cast.erin).get(reverse("backups:index")).content.decode()
    assert reverse("backups:ceremony", args=[escrow.pk]) in page
    assert reverse("backups:ceremony", args=[newer.pk]) in page
    assert "It replaces this one once every holder has taken their share" in page


def test_an_approved_restore_says_it_waits_for_shares_and_holders_see_it_on_their_dashboard(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony
) -> None:
    from tests.backups.conftest import enter, take_shares

    shares = take_shares(escrow, clock)
    key = generate_key(cast.alice, cast.approvers, clock, name="payments")
    backup = back_up(key, cast, clock)
    req = open_restore(key, backup, cast, clock)
    restore = Restore.objects.get(request=req)
    page = web_client(cast.alice).get(reverse("approvals:request_detail", args=[req.pk])).content.decode()
    assert "waiting for the custodians&#x27; shares" in page and "(0 so far)" in page
    assert "being carried out" not in page
    assert reverse("backups:restore", args=[restore.pk]) in page
    bob_dashboard = web_client(cast.bob).get("/").content.decode()
    assert "Key shares need you" in bob_dashboard and reverse("backups:restore", args=[restore.pk]) in bob_dashboard
    enter(restore.pk, cast.bob, shares["bob"], clock)
    assert reverse("backups:restore", args=[restore.pk]) not in web_client(cast.bob).get("/").content.decode()
    assert reverse("backups:restore", args=[restore.pk]) in web_client(cast.carol).get("/").content.decode()
    assert "Key shares need you" not in web_client(cast.alice).get("/").content.decode()  # not a custodian


def test_escrow_shares_to_take_show_on_the_holders_dashboard(
    cast: SimpleNamespace, clock: Any, escrow: EscrowCeremony
) -> None:
    share = escrow.shares.get(holder=cast.bob)
    page = web_client(cast.bob).get("/").content.decode()
    assert reverse("backups:share_retrieve", args=[escrow.pk, share.index]) in page
    assert "before" in page
