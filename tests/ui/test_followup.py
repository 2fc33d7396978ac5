"""What a new user found confusing in the console (follow-up to issue 6), one test per behaviour:
reviews and dual-controlled steps on the key page, the lost-device and lockout texts, enrolment
throttling, service accounts at the sign-in page, the auditor's dashboard, version badges and
periods, the policy description and PIN sources, decisions posted to the request page, the 405
page, the audit filters, and the requester's note on their own request."""

from __future__ import annotations

import base64
import datetime as dt
import re
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from django_otp.oath import totp

from approvals.models import ApprovalRequest, RequestState
from approvals.services import decide, open_request
from audit.models import AuditEvent
from lifecycle.models import Hsm, Key
from lifecycle.selectors import REVIEW, STEP, TRANSITION, key_timeline
from lifecycle.states import KeyState
from lifecycle.views import pin_sources
from tests.conftest import PASSWORD, api_client, fresh_otp, make_user, otp_code, web_client
from tests.lifecycle.helpers import generate_key, on_commit, run_operation

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(alice: Any, bob: Any, carol: Any, clock: Any) -> Key:
    return generate_key(alice, [bob, carol], clock, name="payments")


def section(page: str, marker: str) -> str:
    """The HTML of the card whose heading has the id `marker` (up to the end of its section)."""
    return page.split(f'id="{marker}"', 1)[1].split("</section>", 1)[0]


def version_row(page: str, number: int) -> str:
    return page.split(f'data-version="{number}"', 1)[1].split("</tr>", 1)[0]


def field_error(response: Any, field: str) -> str:
    content = response.content.decode()
    return " ".join(part.split("<", 1)[0] for part in content.split(f'data-field="{field}">')[1:])


def review_of(req: ApprovalRequest) -> ApprovalRequest:
    return ApprovalRequest.objects.get(operation="review", review_of=req)


# --- 1. Mandatory reviews on the key page ---------------------------------------------------------


def test_an_immediate_suspension_shows_its_pending_review_among_the_open_requests(key: Key, bob: Any) -> None:
    with on_commit():
        web_client(bob).post(f"/keys/{key.pk}/request/suspend/", {"justification": "Suspicious use."})
    review = ApprovalRequest.objects.get(operation="review", state=RequestState.PENDING)
    page = web_client(bob).get(f"/keys/{key.pk}/").content.decode()
    panel = section(page, "requests-title")
    assert f'href="/requests/{review.pk}/"' in panel
    assert "Review of the immediate suspension" in panel
    assert "waits for a custodian to confirm or dispute it" in panel
    # The state callout at the top says so too.
    assert "Custodians must review this suspension" in page.split('id="review-status"', 1)[1].split("</p>", 1)[0]
    # A pending review is not history yet: the timeline has no review entry.
    assert "Review confirmed" not in page and "Review disputed" not in page


def test_decided_reviews_show_on_the_key_page_confirmed_or_disputed_with_the_comment(
    key: Key, alice: Any, bob: Any, carol: Any, dave: Any, clock: Any
) -> None:
    suspension = run_operation("suspend", key, bob, [], clock, justification="Odd traffic.")
    decide(
        request_id=review_of(suspension).pk,
        approver=carol,
        decision="approve",
        otp=fresh_otp(carol, clock),
        digest=review_of(suspension).digest,
        comment="Right call.",
    )
    run_operation("resume", key, alice, [carol, dave], clock)
    compromise = run_operation("compromise", key, bob, [], clock, justification="Key file found on a laptop.")
    disputed = review_of(compromise)
    decide(
        request_id=disputed.pk,
        approver=dave,
        decision="reject",
        otp=fresh_otp(dave, clock),
        digest=disputed.digest,
        comment="The laptop file was a decoy.",
    )

    entries = [e for e in key_timeline(key) if e.kind == REVIEW]
    assert [(e.outcome, e.reviewed.pk, e.request.pk) for e in entries] == [
        ("confirmed", suspension.pk, review_of(suspension).pk),
        ("disputed", compromise.pk, disputed.pk),
    ]
    assert [(d.approver, d.decision, d.comment) for d in entries[1].decisions] == [
        ("dave", "reject", "The laptop file was a decoy.")
    ]

    page = web_client(alice).get(f"/keys/{key.pk}/").content.decode()
    status = page.split('id="review-status"', 1)[1].split("</p>", 1)[0]
    assert "The reviewers disputed this marking as compromised" in status
    assert "dave: “The laptop file was a decoy.”" in status
    timeline = section(page, "timeline-title")
    assert "Review confirmed" in timeline and "Confirmed by <strong>carol</strong>" in timeline
    assert "Review disputed" in timeline and "Disputed by <strong>dave</strong>" in timeline
    assert "“The laptop file was a decoy.”" in timeline
    assert f'href="/requests/{disputed.pk}/"' in timeline
    # Oldest first, like the rest of the timeline.
    assert timeline.index("Review confirmed") < timeline.index("Review disputed")


# --- 2. Dual-controlled steps that change no state ------------------------------------------------


def test_the_timeline_lists_the_dual_controlled_steps_with_their_requests_and_approvers(
    key: Key, alice: Any, bob: Any, carol: Any, dave: Any, svc: Any, clock: Any
) -> None:
    rotation = run_operation("rotate", key, alice, [dave], clock)
    grant = run_operation(
        "grant", key, alice, [bob, carol], clock, parameters={"grantee": "svc", "operations": ["encrypt"]}
    )
    scheduled = run_operation("schedule_destruction", key, alice, [bob, carol], clock)
    destroy_after = key.destroy_after
    cancelled = run_operation("cancel_destruction", key, alice, [dave], clock)

    steps = [e for e in key_timeline(key) if e.kind == STEP]
    assert [(e.action, e.request.pk) for e in steps] == [
        ("key.rotation_started", rotation.pk),
        ("key.grant_changed", grant.pk),
        ("key.destruction_scheduled", scheduled.pk),
        ("key.destruction_cancelled", cancelled.pk),
    ]
    assert [d.approver for d in steps[2].decisions] == ["bob", "carol"]
    assert steps[2].details["destroy_after"] == destroy_after.isoformat()
    assert (steps[0].version, steps[0].to_state, steps[0].from_state) == (2, "", None)

    timeline = section(web_client(alice).get(f"/keys/{key.pk}/").content.decode(), "timeline-title")
    assert f"destroyed after {destroy_after:%Y-%m-%d %H:%M} UTC (30-day waiting period)" in timeline
    assert "Destruction cancelled (it was due after" in timeline
    assert "Rotation started: the HSM generates version 2" in timeline
    assert "Grant changed: service account svc may encrypt." in timeline
    for req in (rotation, grant, scheduled, cancelled):
        assert f'href="/requests/{req.pk}/"' in timeline
    assert "Approved by <strong>bob</strong>" in timeline.split("Destruction scheduled")[1]
    # In time order: the rotation starts before version 2 appears.
    assert timeline.index("Rotation started") < timeline.index("Version 2")


def test_a_compromised_key_shows_its_revocation_notice_and_processing_exception(
    key: Key, alice: Any, bob: Any, carol: Any, clock: Any
) -> None:
    run_operation("compromise", key, alice, [], clock, justification="Leaked.")
    until = (clock.now() + dt.timedelta(days=5)).replace(microsecond=0)
    exception = run_operation(
        "process_exception", key, alice, [bob, carol], clock, parameters={"until": until.isoformat()}
    )
    steps = [e for e in key_timeline(key) if e.kind == STEP]
    assert [e.action for e in steps] == ["key.revocation_notice", "key.process_exception_granted"]
    assert steps[1].request.pk == exception.pk
    entries = key_timeline(key)
    # The notice follows the compromise it announces.
    compromised = next(i for i, e in enumerate(entries) if e.kind == TRANSITION and e.to_state == "compromised")
    assert entries.index(steps[0]) > compromised
    page = web_client(alice).get(f"/keys/{key.pk}/").content.decode()
    assert f"may decrypt and verify until {until:%Y-%m-%d %H:%M} UTC" in page
    assert "Revocation notice recorded" in page


def test_the_timeline_query_count_stays_fixed_with_steps_and_reviews(
    key: Key, alice: Any, bob: Any, carol: Any, dave: Any, clock: Any, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(4):
        short = key_timeline(key)
    for _ in range(2):
        suspension = run_operation("suspend", key, bob, [], clock)
        decide(
            request_id=review_of(suspension).pk,
            approver=carol,
            decision="approve",
            otp=fresh_otp(carol, clock),
            digest=review_of(suspension).digest,
        )
        run_operation("resume", key, alice, [carol, dave], clock)
        run_operation("schedule_destruction", key, alice, [bob, carol], clock)
        run_operation("cancel_destruction", key, alice, [dave], clock)
    with django_assert_num_queries(4):
        long = key_timeline(key)
        for entry in long:
            _ = (entry.request and entry.request.requester.get_username(), entry.decisions, entry.reviewed)
    assert len(long) == len(short) + 10  # per round: suspend, its review, resume, scheduled, cancelled
    assert {e.kind for e in long} == {TRANSITION, STEP, REVIEW}


# --- 3. Lost device, locked account ---------------------------------------------------------------


def test_the_code_page_names_the_operator_command_that_resets_a_lost_device(bob: Any) -> None:
    client = Client()
    client.post("/accounts/login/", {"username": "bob", "password": PASSWORD})
    page = client.get("/accounts/otp/").content.decode()
    assert "python manage.py kms_user reset-totp bob" in page
    assert "recorded in the audit trail" in page
    assert "security officer" not in page.split('id="lost-device"')[1].split("</p>", 1)[0]


def test_the_lockout_message_says_the_lock_ends_by_itself(bob: Any, clock: Any) -> None:
    client = Client()
    for _ in range(settings.KMS_LOGIN_MAX_FAILURES):
        response = client.post("/accounts/login/", {"username": "bob", "password": "guess"})
    content = response.content.decode()
    until = clock.now() + dt.timedelta(seconds=settings.KMS_LOGIN_LOCKOUT_SECONDS)
    assert f"this account is locked until {until:%H:%M} UTC" in content
    assert "The lock ends by itself then" in content
    minutes = settings.KMS_LOGIN_LOCKOUT_SECONDS // 60
    assert f"({minutes} minute{'s' if minutes != 1 else ''} after the last failed try)" in content
    assert "security officer" not in content


# --- 4. Throttled codes ---------------------------------------------------------------------------


def test_enrolment_says_when_a_right_code_comes_too_soon_after_a_wrong_one(kms: Any, clock: Any) -> None:
    make_user("nina", {"custodian"}, totp=False)
    client = Client()
    client.post("/accounts/login/", {"username": "nina", "password": PASSWORD})
    page = client.get("/accounts/enrol/").content.decode()
    secret = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page).group(1).replace(" ", "")
    right = f"{totp(base64.b32decode(secret), 30, 0, 6, 0):06d}"
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    response = client.post("/accounts/enrol/", {"code": wrong})
    errors = field_error(response, "code")
    assert "That code is not valid for the new device" in errors
    assert "Wait 1 second before the next try" in errors
    # The right code at once: refused because of the pause, and the page says so (not the clock).
    response = client.post("/accounts/enrol/", {"code": right})
    errors = field_error(response, "code")
    assert "Codes are refused for 1 second more, even a correct one" in errors
    assert "clock" not in errors
    clock.advance(seconds=2)  # the pause is over; the same time step, the code was never accepted
    response = client.post("/accounts/enrol/", {"code": right})
    assert response.status_code == 302


def test_the_sign_in_code_page_says_when_codes_are_paused(bob: Any, clock: Any) -> None:
    client = Client()
    client.post("/accounts/login/", {"username": "bob", "password": PASSWORD})
    right = otp_code(bob)
    client.post("/accounts/otp/", {"code": f"{(int(right) + 1) % 1_000_000:06d}"})
    response = client.post("/accounts/otp/", {"code": right})
    assert "That code was not checked. Codes are refused for 1 second more" in field_error(response, "code")
    clock.advance(seconds=2)
    assert client.post("/accounts/otp/", {"code": right}).status_code == 302


# --- 5. Service accounts --------------------------------------------------------------------------


def test_a_service_account_is_refused_at_the_password_step_and_told_to_use_a_token(svc: Any) -> None:
    client = Client()
    response = client.post("/accounts/login/", {"username": "svc", "password": PASSWORD})
    assert response.status_code == 200
    content = response.content.decode()
    assert "This is a service account (API client). Service accounts do not sign in to the console" in content
    assert "API token" in content
    assert "_auth_user_id" not in client.session  # no session was opened
    assert client.get("/")["Location"].startswith("/accounts/login/")
    event = AuditEvent.objects.filter(action="auth.login_failed").order_by("-seq").first()
    assert event.details["username"] == "svc" and event.details["reason"] == "service account"
    assert not AuditEvent.objects.filter(action="auth.login", actor="svc").exists()


def test_a_wrong_password_for_a_service_account_reveals_nothing(svc: Any) -> None:
    response = Client().post("/accounts/login/", {"username": "svc", "password": "guess"})
    content = response.content.decode()
    assert "The username or password is not correct." in content
    assert "service account" not in content


# --- 6. The auditor's dashboard and the navigation ------------------------------------------------


def test_an_auditor_dashboard_shows_audit_activity_verification_and_compliance(
    key: Key, erin: Any, django_assert_num_queries: Any
) -> None:
    client = web_client(erin)
    client.get("/")
    # session, user, device, roles, keys by state, nearing keys, failed jobs, latest events, chain
    # head, checkpoint, the audit.read (savepoint, head lock, insert, head update, release), the
    # session's last-seen update (savepoint, update, release); no inbox queries
    with django_assert_num_queries(18):
        response = client.get("/")
    page = response.content.decode()
    assert "Waiting for your decision" not in page and "Your open requests" not in page
    activity = section(page, "activity-title")
    assert "key.created" in activity and "audit.read" not in activity
    assert 'action="/audit/verify/"' in page
    assert 'href="/compliance/"' in section(page, "compliance-title")
    read = AuditEvent.objects.filter(action="audit.read", actor="erin").order_by("-seq").first()
    assert read.details["view"] == "dashboard"


def test_other_roles_keep_their_work_on_the_dashboard(key: Key, bob: Any) -> None:
    page = web_client(bob).get("/").content.decode()
    assert "Waiting for your decision" in page and "Your open requests" in page
    assert "Recent audit activity" not in page
    assert not AuditEvent.objects.filter(action="audit.read", actor="bob").exists()


def test_the_user_menu_stacks_the_roles_under_the_name(olivia: Any) -> None:
    page = web_client(olivia).get("/").content.decode()
    menu = page.split('class="user-menu"', 1)[1].split("</div>", 2)
    assert 'class="user-id"' in menu[0] and 'title="Security officer"' in menu[0]


# --- 7. Versions of a suspended, deactivated or condemned key -------------------------------------


def test_a_suspended_keys_versions_say_the_key_is_suspended(key: Key, alice: Any, clock: Any) -> None:
    run_operation("suspend", key, alice, [], clock)
    row = version_row(web_client(alice).get(f"/keys/{key.pk}/").content.decode(), 1)
    assert "badge-active badge-dimmed" in row and "(key suspended)" in row
    protects = row.split("data-protects", 1)[1].split("</td>", 1)[0]
    assert 'title="Nothing may use the key: key suspended"' in protects and "paused" in protects


def test_a_deactivated_version_no_longer_protects_but_still_processes(
    key: Key, alice: Any, dave: Any, clock: Any
) -> None:
    run_operation("rotate", key, alice, [dave], clock)
    old = key.versions.get(number=1)
    assert old.state == KeyState.DEACTIVATED
    page = web_client(alice).get(f"/keys/{key.pk}/").content.decode()
    row = version_row(page, 1)
    protects = row.split("data-protects", 1)[1].split("</td>", 1)[0]
    processes = row.split("data-processes", 1)[1].split("</td>", 1)[0]
    assert "No longer" in protects
    assert f'deactivated since <span class="nowrap">{old.deactivated_at:%Y-%m-%d %H:%M}</span>' in protects
    assert f"{old.originator_until:%Y-%m-%d}" not in protects
    assert f"{old.recipient_until:%Y-%m-%d %H:%M}" in processes and "still decrypts" in processes
    current = version_row(page, 2)
    assert "badge-dimmed" not in current and "No longer" not in current


def test_a_key_scheduled_for_destruction_dims_its_versions(
    key: Key, alice: Any, bob: Any, carol: Any, clock: Any
) -> None:
    run_operation("schedule_destruction", key, alice, [bob, carol], clock)
    row = version_row(web_client(alice).get(f"/keys/{key.pk}/").content.decode(), 1)
    assert "badge-dimmed" in row and "(destruction scheduled)" in row


# --- 8. Policy description, PIN sources -----------------------------------------------------------


def policy_data(client: Any, **changes: Any) -> dict[str, Any]:
    form = client.get("/policies/standard/propose/").context["form"]
    data: dict[str, Any] = {}
    for name in form.fields:
        value = form[name].value()
        if isinstance(value, bool):
            if value:
                data[name] = "on"
        elif value is not None:
            data[name] = value
    data.update(changes)
    return data


def test_changed_settings_with_the_old_description_are_refused_next_to_the_description(olivia: Any, kms: Any) -> None:
    client = web_client(olivia)
    page = client.get("/policies/standard/propose/").content.decode()
    assert "30 days before destruction" in page  # still filled in, to edit
    response = client.post(
        "/policies/standard/propose/", policy_data(client, destruction_wait_days="10", justification="Shorter.")
    )
    assert "You changed settings but kept version 1&#x27;s description" in field_error(response, "description")
    assert not ApprovalRequest.objects.exists()
    response = client.post(
        "/policies/standard/propose/",
        policy_data(client, destruction_wait_days="10", keep_description="on", justification="Shorter."),
    )
    req = ApprovalRequest.objects.get(operation="policy_change")
    assert response["Location"] == f"/requests/{req.pk}/"
    assert "keep_description" not in req.parameters["settings"]


def test_a_description_change_alone_needs_no_confirmation(olivia: Any, kms: Any) -> None:
    client = web_client(olivia)
    response = client.post(
        "/policies/standard/propose/", policy_data(client, description="Clearer words.", justification="Wording.")
    )
    assert response.status_code == 302


def test_pin_sources_are_listed_in_the_drivers_order(tmp_path: Any, monkeypatch: Any) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("not read by the console")
    hsm = Hsm(name="dc2", pin_env="KMS_UI2_TEST_PIN", pin_file=str(pin_file))
    monkeypatch.delenv("KMS_UI2_TEST_PIN", raising=False)
    assert [(s["name"], s["status"], s["used"]) for s in pin_sources(hsm)] == [
        ("$KMS_UI2_TEST_PIN", "not set", False),
        (str(pin_file), "present", True),
    ]
    monkeypatch.setenv("KMS_UI2_TEST_PIN", "1234")
    assert [s["used"] for s in pin_sources(hsm)] == [True, False]
    monkeypatch.setenv("KMS_UI2_TEST_PIN", "")  # an empty variable counts as not set, as in the driver
    assert [s["used"] for s in pin_sources(hsm)] == [False, True]
    assert [s["status"] for s in pin_sources(Hsm(name="x", pin_file=str(tmp_path / "gone")))] == ["missing"]


def test_the_hsm_page_shows_the_file_in_use_when_the_variable_is_not_set(
    olivia: Any, kms: Any, tmp_path: Any, monkeypatch: Any
) -> None:
    pin_file = tmp_path / "hsm_user_pin"
    pin_file.write_text("0000")
    monkeypatch.delenv("KMS_UI2_TEST_PIN", raising=False)
    Hsm.objects.create(
        name="dc2",
        module=settings.KMS_PKCS11_MODULE,
        token_label="dc2",
        pin_env="KMS_UI2_TEST_PIN",
        pin_file=str(pin_file),
        registered_at=timezone.now(),
        retired_at=timezone.now(),  # retired: the page does not ask its token
    )
    page = web_client(olivia).get("/hsms/").content.decode()
    card = next(card for card in page.split('<section class="card"')[1:] if '">dc2' in card)
    sources = card.split("data-pin-sources", 1)[1].split("</dd>", 1)[0]
    assert sources.index("$KMS_UI2_TEST_PIN") < sources.index(str(pin_file))
    assert '$KMS_UI2_TEST_PIN</span> <span class="muted">— environment variable, not set</span></li>' in sources
    assert (
        f'{pin_file}</span> <span class="muted">— file, present</span> <span class="badge badge-ok">in use' in sources
    )
    assert "0000" not in page


# --- 9. Small things ------------------------------------------------------------------------------


def test_hours_and_checkpoints_are_pluralised(key: Key, bob: Any) -> None:
    with on_commit():
        web_client(bob).post(f"/keys/{key.pk}/request/suspend/", {"justification": "Check."})
    review = ApprovalRequest.objects.get(operation="review")
    assert review.execute_within_hours == 1
    page = web_client(bob).get(f"/requests/{review.pk}/").content.decode()
    assert "1 hour of approval" in page and "1 hours" not in page


@pytest.fixture
def rotation(key: Key, alice: Any) -> ApprovalRequest:
    return open_request(
        operation="rotate", requester=alice, justification="Yearly rotation.", target_id=str(key.pk), parameters={}
    )


def test_the_decision_form_posts_to_the_request_page_and_redirects_back(
    rotation: ApprovalRequest, bob: Any, clock: Any
) -> None:
    client = web_client(bob)
    page = client.get(f"/requests/{rotation.pk}/").content.decode()
    assert f'action="/requests/{rotation.pk}/"' in page
    assert f"/requests/{rotation.pk}/decide/" not in page
    wrong = f"{(int(fresh_otp(bob, clock)) + 1) % 1_000_000:06d}"
    response = client.post(
        f"/requests/{rotation.pk}/", {"digest": rotation.digest, "otp": wrong, "decision": "approve"}
    )
    assert response.status_code == 200  # the refusal is shown on the request page itself
    assert "wrong, reused or throttled" in field_error(response, "otp")
    clock.advance(seconds=31)
    with on_commit():
        response = client.post(
            f"/requests/{rotation.pk}/",
            {"digest": rotation.digest, "otp": fresh_otp(bob, clock), "decision": "approve"},
        )
    assert response.status_code == 302 and response["Location"] == f"/requests/{rotation.pk}/"
    assert "You approved the request" in client.get(response["Location"]).content.decode()


def test_only_deciding_roles_may_post_to_the_request_page(rotation: ApprovalRequest, erin: Any) -> None:
    response = web_client(erin).post(
        f"/requests/{rotation.pk}/", {"digest": rotation.digest, "otp": "123456", "decision": "approve"}
    )
    assert response.status_code == 403
    assert not rotation.decisions.exists()


def test_a_get_on_a_post_only_address_shows_a_page(olivia: Any, kms: Any) -> None:
    response = web_client(olivia).get("/hsms/default/retire/", HTTP_REFERER="http://testserver/hsms/")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    content = response.content.decode()
    assert "This address is not a page" in content and "It only takes a form submission (POST)" in content
    assert 'href="http://testserver/hsms/"' in content  # back where the user came from
    assert 'aria-label="Main"' in content  # the console's frame, with its navigation
    # A foreign referer is not offered as the way back.
    foreign = web_client(olivia).get("/hsms/default/retire/", HTTP_REFERER="https://evil.example/")
    assert "evil.example" not in foreign.content.decode()
    # Signed out, the page still answers (without the navigation).
    assert "This address is not a page" in Client().get("/accounts/logout/").content.decode()


def test_the_api_keeps_its_json_error_for_a_wrong_method(key: Key, alice: Any) -> None:
    response = api_client(alice).get(f"/api/v1/keys/{key.pk}/rotate/")
    assert response.status_code == 405
    assert response.json()["error"]["code"]


def test_the_audit_action_filter_matches_part_of_an_action(bob: Any, erin: Any) -> None:
    Client().post("/accounts/login/", {"username": "bob", "password": "guess"})
    client = web_client(erin)
    page = client.get("/audit/?action=login").context["page_obj"]
    actions = {event.action for event in page}
    assert actions == {"auth.login_failed"}
    assert {e.action for e in client.get("/audit/?action=LOGIN_F").context["page_obj"]} == {"auth.login_failed"}
    # A trailing dot still means "the family": a prefix, not a substring.
    assert all(e.action.startswith("audit.") for e in client.get("/audit/?action=audit.").context["page_obj"])


def test_invalid_audit_dates_are_a_visible_error_and_the_other_filters_still_apply(
    clock: Any, bob: Any, erin: Any
) -> None:
    # The clock comes first: every event of the test then carries the frozen date.
    Client().post("/accounts/login/", {"username": "bob", "password": "guess"})
    client = web_client(erin)
    response = client.get("/audit/?from=notadate&action=login&seq=abc")
    content = response.content.decode()
    assert "Enter the start date as YYYY-MM-DD." in content
    assert 'id="filter-errors"' in content
    assert "Not a filter of this page, ignored: <span" in content and ">seq<" in content
    assert {e.action for e in response.context["page_obj"]} == {"auth.login_failed"}
    today = clock.now().date()
    tomorrow = today + dt.timedelta(days=1)
    assert client.get(f"/audit/?from={tomorrow}").context["page_obj"].paginator.count == 0
    assert client.get(f"/audit/?from={today}&to={today}").context["page_obj"].paginator.count > 0


# --- 10. The requester on their own request -------------------------------------------------------


def test_the_requester_reads_that_they_cannot_approve_and_gets_no_form(rotation: ApprovalRequest, alice: Any) -> None:
    page = web_client(alice).get(f"/requests/{rotation.pk}/").content.decode()
    assert 'id="requester-note"' in page
    assert 'id="decide"' not in page and 'name="otp"' not in page
    assert "You cannot approve your own request" in page
    assert "it needs 1 approval from a key custodian" in page


def test_the_custodian_who_suspended_reads_why_they_cannot_decide_the_review(key: Key, bob: Any) -> None:
    with on_commit():
        web_client(bob).post(f"/keys/{key.pk}/request/suspend/", {"justification": "Check."})
    review = ApprovalRequest.objects.get(operation="review")
    page = web_client(bob).get(f"/requests/{review.pk}/").content.decode()
    note = page.split('id="requester-note"', 1)[1].split("</div>", 1)[0]
    assert "This review checks the immediate step you took" in note
    assert "cancel it" not in note
    # A mandatory review is not withdrawn by the person whose step it checks.
    assert f"/requests/{review.pk}/cancel/" not in page
