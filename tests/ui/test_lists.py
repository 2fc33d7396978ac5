"""The list pages: pinned query counts (no N+1), filters, pagination, empty states, the dashboard,
the audit trail (reads are recorded; verify finds the first broken event) and the job-status poll."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from approvals.services import open_request
from audit.db import bypass_append_only
from audit.models import AuditEvent
from lifecycle.models import Job, JobStatus, Key
from tests.conftest import make_user, web_client
from tests.lifecycle.helpers import generate_key, on_commit

pytestmark = pytest.mark.django_db

# Fixed costs of a console page: session, user, OTP device, roles, the session's last-seen update
# (a savepoint, the update, its release) and the inbox count of the navigation bar (the selector's
# two queries; one when nothing waits, as for alice who made every request); custodians add the
# acknowledgement check.
PAGE_OVERHEAD = {"alice": 8, "dave": 10}
QUERIES = {
    # page: (viewer, queries on top of the overhead; they must not grow with the number of rows)
    "/keys/": ("dave", 3),  # policies for the filter, count, page
    "/requests/?view=all": ("dave", 2),  # count, page (approval counts annotated)
    "/requests/?view=mine": ("alice", 2),  # count, page
    "/requests/": ("dave", 1),  # the inbox: count, page; the selector's candidates query is the nav's
    "/jobs/": ("dave", 2),  # count, page
    "/policies/": ("dave", 3),  # policies with key counts, current versions, open policy requests
    "/custodians/": ("dave", 3),  # people (TOTP, acknowledgement), their groups, open role requests
    "/hsms/": ("dave", 2),  # HSMs with key counts, open HSM requests (health asks the token, not the DB)
    # inbox, own requests, keys by state, nearing keys, failed jobs (the nav reuses the inbox), and for
    # a custodian the escrow shares to take and the restores waiting for their share
    "/": ("dave", 6),
}


def make_keys(alice: Any, bob: Any, carol: Any, clock: Any, count: int, prefix: str) -> list[Key]:
    keys = [generate_key(alice, [bob, carol], clock, name=f"{prefix}-{i}") for i in range(count)]
    with on_commit():
        for key in keys:
            open_request(
                operation="rotate", requester=alice, justification="rotation", target_id=str(key.pk), parameters={}
            )
    return keys


def count_queries(client: Any, path: str, django_assert_num_queries: Any, expected: int) -> Any:
    with django_assert_num_queries(expected):
        response = client.get(path)
    assert response.status_code == 200
    return response


@pytest.mark.parametrize("path", list(QUERIES))
def test_list_pages_run_a_fixed_number_of_queries_whatever_the_number_of_rows(
    path: str, alice: Any, bob: Any, carol: Any, dave: Any, olivia: Any, clock: Any, django_assert_num_queries: Any
) -> None:
    viewer, extra = QUERIES[path]
    expected = PAGE_OVERHEAD[viewer] + extra
    client = web_client(alice if viewer == "alice" else dave)
    make_keys(alice, bob, carol, clock, 1, "few")
    count_queries(client, path, django_assert_num_queries, expected)
    make_keys(alice, bob, carol, clock, 5, "many")
    make_user("extra-custodian", {"custodian"})
    count_queries(client, path, django_assert_num_queries, expected)


def test_the_audit_page_runs_a_fixed_number_of_queries_and_records_the_read(
    alice: Any, bob: Any, carol: Any, erin: Any, clock: Any, django_assert_num_queries: Any
) -> None:
    client = web_client(erin)
    # session, user, device, roles (an auditor's inbox is empty without a query), count, page,
    # the audit.read event (savepoint, head lock, insert, head update, release), chain head,
    # checkpoint, the session's last-seen update (3)
    with django_assert_num_queries(AUDIT_QUERIES):
        client.get("/audit/")
    make_keys(alice, bob, carol, clock, 3, "k")
    with django_assert_num_queries(AUDIT_QUERIES):
        response = client.get("/audit/?action=request.&actor=bob")
    event = AuditEvent.objects.filter(action="audit.read").order_by("-seq").first()
    assert event.actor == "erin"
    assert event.details == {"filters": {"action": "request.", "actor": "bob"}, "page": 1}
    content = response.content.decode()
    assert "request.approval_recorded" in content
    assert "key.created" not in content


AUDIT_QUERIES = 16


def test_key_filters_narrow_the_list(alice: Any, bob: Any, carol: Any, clock: Any) -> None:
    generate_key(alice, [bob, carol], clock, name="alpha")
    generate_key(alice, [bob, carol], clock, name="beta", algorithm="EC-P256", usage="sign_verify")
    client = web_client(bob)

    def names(query: str) -> set[str]:
        page = client.get(f"/keys/?{query}").context["page_obj"]
        return {key.name for key in page}

    assert names("") == {"alpha", "beta"}
    assert names("algorithm=EC-P256") == {"beta"}
    assert names("usage=encrypt_decrypt") == {"alpha"}
    assert names("state=active&policy=standard") == {"alpha", "beta"}
    assert names("state=suspended") == set()
    assert names("q=alp") == {"alpha"}
    assert names("tag=nothing") == set()
    response = client.get("/keys/?state=suspended")
    assert b"No key matches these filters" in response.content
    assert b'<option value="">Any state</option>' in response.content
    assert b"---------" not in response.content


def test_bad_filter_values_are_explained_and_never_fail(alice: Any, bob: Any, carol: Any, clock: Any) -> None:
    generate_key(alice, [bob, carol], clock, name="alpha")
    client = web_client(bob)
    response = client.get("/keys/?state=melted&page=abc")
    assert response.status_code == 200
    assert b"Select a valid choice. melted is not one of the available choices." in response.content
    assert client.get("/keys/?page=999").status_code == 200
    assert client.get("/jobs/?status=nope&key=not-a-uuid").status_code == 200
    assert client.get("/requests/?view=all&state=%00").status_code == 200
    assert client.get("/requests/?view=bogus").status_code == 200
    response = web_client(make_user("ada", {"auditor"})).get("/audit/?since=yesterday&until=2026-01-01")
    assert b"Enter the start date as YYYY-MM-DD." in response.content


def test_pagination_keeps_the_filters(alice: Any, bob: Any, carol: Any, clock: Any) -> None:
    for i in range(27):
        generate_key(alice, [bob, carol], clock, name=f"key-{i:02d}")
    client = web_client(bob)
    page_one = client.get("/keys/?state=active").content.decode()
    assert "1\u201325 of 27" in page_one
    assert 'href="?state=active&amp;page=2"' in page_one
    page_two = client.get("/keys/?state=active&page=2").context["page_obj"]
    assert [key.name for key in page_two] == ["key-25", "key-26"]


def test_empty_lists_say_what_to_do_next(alice: Any, erin: Any) -> None:
    assert b"No keys yet" in web_client(alice).get("/keys/").content
    assert b"Request a new key" in web_client(alice).get("/keys/").content
    assert b"Request a new key" not in web_client(erin).get("/keys/").content
    assert b"No jobs yet" in web_client(erin).get("/jobs/").content
    assert b"You have made no requests" in web_client(alice).get("/requests/?view=mine").content
    assert b"No requests yet" in web_client(erin).get("/requests/").content


def test_the_inbox_lists_what_waits_for_the_custodian_and_not_for_the_requester(
    alice: Any, bob: Any, carol: Any, clock: Any
) -> None:
    key = generate_key(alice, [bob, carol], clock, name="alpha")
    req = open_request(
        operation="rotate", requester=alice, justification="rotation", target_id=str(key.pk), parameters={}
    )
    inbox = web_client(bob).get("/requests/")
    assert inbox.context["view"] == "waiting"
    assert f"/requests/{req.pk}/" in inbox.content.decode()
    assert b'<span class="nav-count"' in inbox.content
    # A key administrator approves nothing: their requests page opens on what they asked for.
    alice_page = web_client(alice).get("/requests/")
    assert alice_page.context["view"] == "mine"
    assert f"/requests/{req.pk}/" in alice_page.content.decode()
    assert f"/requests/{req.pk}/" not in web_client(alice).get("/requests/?view=waiting").content.decode()


def test_the_dashboard_shows_the_estate(alice: Any, bob: Any, carol: Any, clock: Any) -> None:
    key = generate_key(alice, [bob, carol], clock, name="alpha")
    open_request(operation="rotate", requester=alice, justification="rotation", target_id=str(key.pk), parameters={})
    failed = Job.objects.create(kind="rotate", key=key, status=JobStatus.FAILED, created_at=clock.now(), error="x")
    page = web_client(bob).get("/")
    content = page.content.decode()
    assert page.context["waiting_total"] == 1
    assert page.context["chart"]["total"] == 1
    assert 'aria-label="Keys by state: Pre-activation 0, Active 1,' in content
    assert f"/jobs/{failed.pk}/" in content
    assert "No key is close to the end of its originator period" in content
    clock.advance(days=key.primary_version.originator_until.date().toordinal() - clock.now().date().toordinal() - 10)
    # (bob's acknowledgement has expired by then: alice, who needs none, looks)
    content = web_client(alice).get("/").content.decode()
    assert "Originator period ending within 30 days" in content
    assert f"/keys/{key.pk}/" in content.split("Originator period ending")[1]


def test_the_custodians_page_flags_missing_second_factors_and_acknowledgements(
    bob: Any, olivia: Any, clock: Any
) -> None:
    make_user("newbie", {"custodian"}, totp=False, acknowledged=False)
    make_user("visitor", set(), totp=False)
    page = web_client(olivia).get("/custodians/").content.decode()
    newbie_row = page.split(">newbie<", 1)[1].split("</tr>", 1)[0]
    assert "missing — must enrol" in newbie_row
    assert "missing — cannot approve" in newbie_row
    bob_row = page.split(">bob<", 1)[1].split("</tr>", 1)[0]
    assert "enrolled" in bob_row and "current" in bob_row
    assert "Accounts without a role" in page and "visitor" in page
    clock.advance(days=400)
    page = web_client(olivia).get("/custodians/").content.decode()
    assert "expired" in page.split(">bob<", 1)[1].split("</tr>", 1)[0]


def test_the_hsm_page_shows_what_the_token_reports(olivia: Any, kms: Any) -> None:
    page = web_client(olivia).get("/hsms/").content.decode()
    assert "healthy" in page
    assert "SoftHSM" in page
    assert "CKM_AES_KEY_WRAP" in page or "AES_KEY_WRAP" in page
    assert kms.token.pin not in page


def test_the_job_status_poll_answers_statuses_and_ignores_bad_ids(alice: Any, bob: Any, carol: Any, clock: Any) -> None:
    key = generate_key(alice, [bob, carol], clock, name="alpha")
    job = Job.objects.get(key=key)
    response = web_client(bob).get(f"/jobs/status/?id={job.pk}&id=nonsense&id={uuid.uuid4()}")
    assert response.json() == {"jobs": {str(job.pk): "succeeded"}}


def test_a_running_job_marks_its_page_for_live_refresh(alice: Any, bob: Any, carol: Any, clock: Any) -> None:
    key = generate_key(alice, [bob, carol], clock, name="alpha")
    queued = Job.objects.create(kind="rotate", key=key, created_at=clock.now())
    page = web_client(bob).get(f"/jobs/{queued.pk}/").content.decode()
    assert 'data-job-poll="/jobs/status/"' in page
    assert f'data-job-id="{queued.pk}" data-job-status="queued"' in page
    assert '<script src="/static/js/console.js"' in page
    finished = Job.objects.get(key=key, kind="generate")
    assert 'class="live"' not in web_client(bob).get(f"/jobs/{finished.pk}/").content.decode()


def test_verify_reports_an_intact_chain_then_the_first_edited_event(erin: Any, clock: Any, kms: Any) -> None:
    client = web_client(erin)
    response = client.post("/audit/verify/")
    assert b"The chain verifies" in response.content
    assert AuditEvent.objects.filter(action="audit.verified", actor="erin").count() == 1
    victim = AuditEvent.objects.order_by("seq")[2]
    with bypass_append_only():
        AuditEvent.objects.filter(seq=victim.seq).update(details={"forged": True})
    response = client.post("/audit/verify/")
    content = response.content.decode()
    assert f"The chain is broken at event #{victim.seq}" in content
    assert "edited" in content
    last = AuditEvent.objects.filter(action="audit.verified").order_by("-seq").first()
    assert last.details["ok"] is False and last.details["first_bad_seq"] == victim.seq


def test_the_audit_filters_by_date(clock: Any, erin: Any, kms: Any) -> None:
    # The clock comes first: the installation's events must carry the frozen date, not the real one.
    client = web_client(erin)
    today = clock.now().date()
    assert client.get(f"/audit/?since={today}").context["page_obj"].paginator.count > 0
    tomorrow = today + dt.timedelta(days=1)
    assert client.get(f"/audit/?since={tomorrow}").context["page_obj"].paginator.count == 0
    response = client.get(f"/audit/?since={tomorrow}&until={today}")
    assert b"The end date must not be before the start date." in response.content
