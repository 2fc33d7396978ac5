"""Request forms and decisions in the console: every refusal reads as a sentence next to its field,
nothing a user types produces a 500, and the engine's rules hold whatever the page sends."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from django.conf import settings

from approvals.models import ApprovalRequest, Decision, RequestState
from approvals.services import open_request
from audit.models import AuditEvent
from lifecycle.models import Key
from lifecycle.states import KeyState
from tests.conftest import fresh_otp, otp_code, web_client
from tests.lifecycle.helpers import generate_key, on_commit

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(alice: Any, bob: Any, carol: Any, clock: Any) -> Key:
    return generate_key(alice, [bob, carol], clock, name="payments")


def generate_form(**overrides: str) -> dict[str, str]:
    data = {
        "name": "ledger-2026",
        "algorithm": "AES-256",
        "usage": "encrypt_decrypt",
        "policy": "standard",
        "hsm": "default",
        "activation": "now",
        "activate_at": "",
        "tags": "ledger, pci",
        "description": "",
        "justification": "Encrypts the ledger database.",
    }
    data.update(overrides)
    return data


def field_error(response: Any, field: str) -> str:
    """The sentence shown next to `field` (empty when there is none)."""
    marker = f'data-field="{field}">'
    content = response.content.decode()
    if marker not in content:
        return ""
    return content.split(marker, 1)[1].split("<", 1)[0]


def form_errors(response: Any) -> str:
    """Every error shown above the form (joined)."""
    blocks = response.content.decode().split('class="form-errors"')[1:]
    return " ".join(block.split("</div>", 1)[0] for block in blocks)


# --- Generate -------------------------------------------------------------------------------------


def test_a_key_admin_requests_a_key_and_sees_the_request(alice: Any, clock: Any) -> None:
    client = web_client(alice)
    response = client.post("/keys/new/", generate_form())
    req = ApprovalRequest.objects.get(operation="generate")
    assert response.status_code == 302
    assert response["Location"] == f"/requests/{req.pk}/"
    assert req.parameters["name"] == "ledger-2026"
    assert req.parameters["tags"] == ["ledger", "pci"]
    assert req.parameters["activate_at"] == clock.now().isoformat()
    assert req.requester == alice
    page = client.get(response["Location"])
    assert b"It needs 2 approvals from a key custodian" in page.content
    assert b"Generate a new AES-256 key named &#x27;ledger-2026&#x27;" in page.content


def test_the_activation_choices_become_the_activate_at_parameter(alice: Any, clock: Any) -> None:
    client = web_client(alice)
    client.post("/keys/new/", generate_form(name="later", activation="at", activate_at="2026-12-24T09:30"))
    client.post("/keys/new/", generate_form(name="manual", activation="manual"))
    later = ApprovalRequest.objects.get(parameters__name="later")
    manual = ApprovalRequest.objects.get(parameters__name="manual")
    assert later.parameters["activate_at"] == "2026-12-24T09:30:00+00:00"
    assert manual.parameters["activate_at"] is None


@pytest.mark.parametrize(
    ("overrides", "field", "sentence"),
    [
        ({"name": ""}, "name", "Give the key a name."),
        ({"justification": "  "}, "justification", "Give a justification: say why this step is needed."),
        ({"name": "has spaces"}, "name", "Name must be 1-64 letters, digits, dots, dashes or underscores"),
        (
            {"usage": "sign_verify"},
            "usage",
            "AES-256 keys may be used to encrypt and decrypt data (encrypt_decrypt) or to wrap and unwrap other keys "
            "(wrap_unwrap).",
        ),
        ({"algorithm": "DES"}, "algorithm", "Choose one of the listed algorithms."),
        ({"policy": "nope"}, "policy", "Choose one of the listed policies."),
        ({"activation": "at"}, "activate_at", "Give the date and time of activation (UTC)"),
        ({"activation": "at", "activate_at": "tomorrow"}, "activate_at", "Enter a date and time such as"),
        ({"tags": "ok, not ok!"}, "tags", "&#x27;not ok!&#x27; is not a valid tag"),
        ({"justification": "x" * 2001}, "justification", "Keep the justification under 2000 characters."),
    ],
)
def test_generate_form_errors_read_as_sentences_next_to_their_field(
    alice: Any, clock: Any, overrides: dict[str, str], field: str, sentence: str
) -> None:
    response = web_client(alice).post("/keys/new/", generate_form(**overrides))
    assert response.status_code == 200
    assert sentence in field_error(response, field)
    assert not ApprovalRequest.objects.exists()


def test_a_taken_name_is_refused_next_to_the_name(alice: Any, key: Key) -> None:
    response = web_client(alice).post("/keys/new/", generate_form(name="payments"))
    assert field_error(response, "name") == "A key named &#x27;payments&#x27; exists already."


def test_the_same_pending_generation_twice_is_refused_above_the_form(alice: Any, clock: Any) -> None:
    client = web_client(alice)
    client.post("/keys/new/", generate_form())
    response = client.post("/keys/new/", generate_form())
    assert "is waiting for approval already" in form_errors(response)
    assert ApprovalRequest.objects.count() == 1


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"name": "\x00", "algorithm": "\u00e9", "justification": "\U0001f511"},
        {"name": "a" * 5000, "tags": "," * 3000, "activate_at": "9999-99-99T99:99"},
        {"activation": "at", "activate_at": "0001-01-01T00:00", "justification": "far past"},
        {"hsm": "'; DROP TABLE lifecycle_key; --"},
    ],
)
def test_nothing_typed_into_the_generate_form_produces_a_server_error(alice: Any, clock: Any, data: Any) -> None:
    response = web_client(alice).post("/keys/new/", {**generate_form(), **data} if data else {})
    # Refused with an explanation (200), or accepted when it happens to be valid (a date in the past
    # means "activate as soon as generated"): never a server error.
    assert response.status_code in (200, 302)
    if response.status_code == 200:
        assert 'class="field-error"' in response.content.decode() or form_errors(response)


# --- Operations on a key --------------------------------------------------------------------------


def test_the_key_page_offers_only_what_the_state_and_roles_allow(key: Key, alice: Any, bob: Any, erin: Any) -> None:
    alice_page = web_client(alice).get(f"/keys/{key.pk}/").content.decode()
    for operation in ("rotate", "suspend", "deactivate", "compromise", "schedule_destruction", "grant"):
        assert f"/request/{operation}/" in alice_page
    for operation in ("activate", "resume", "cancel_destruction", "process_exception"):
        assert f"/request/{operation}/" not in alice_page
    bob_page = web_client(bob).get(f"/keys/{key.pk}/").content.decode()
    assert "/request/suspend/" in bob_page and "/request/compromise/" in bob_page
    assert "/request/rotate/" not in bob_page
    erin_page = web_client(erin).get(f"/keys/{key.pk}/").content.decode()
    assert "/request/" not in erin_page
    assert "Auditors read; they do not request changes." in erin_page


def test_a_rotation_request_is_opened_and_a_second_one_is_refused(key: Key, alice: Any) -> None:
    client = web_client(alice)
    response = client.post(f"/keys/{key.pk}/request/rotate/", {"justification": "Yearly rotation."})
    req = ApprovalRequest.objects.get(operation="rotate")
    assert response["Location"] == f"/requests/{req.pk}/"
    assert req.target_id == str(key.pk)
    response = client.post(f"/keys/{key.pk}/request/rotate/", {"justification": "Again."})
    assert "There is already a pending" in form_errors(response)
    page = client.get(f"/keys/{key.pk}/").content.decode()
    assert "Rotate (pending)" in page


def test_a_step_the_state_does_not_allow_is_explained_and_refused(key: Key, alice: Any) -> None:
    client = web_client(alice)
    page = client.get(f"/keys/{key.pk}/request/resume/")
    assert b"Not possible now" in page.content
    assert b"needs it to be suspended" in page.content
    response = client.post(f"/keys/{key.pk}/request/resume/", {"justification": "Resume it."})
    assert response.status_code == 200
    assert b"needs it to be suspended" in response.content
    assert not ApprovalRequest.objects.filter(operation="resume").exists()


def test_a_custodian_suspends_at_once_and_a_review_is_opened(key: Key, bob: Any) -> None:
    client = web_client(bob)
    with on_commit():
        response = client.post(f"/keys/{key.pk}/request/suspend/", {"justification": "Suspicious use."})
    assert response["Location"] == f"/keys/{key.pk}/"
    key.refresh_from_db()
    assert key.state == KeyState.SUSPENDED
    assert ApprovalRequest.objects.filter(operation="review", state=RequestState.PENDING).count() == 1
    page = client.get(response["Location"]).content.decode()
    assert "took effect at once" in page
    assert "Custodians were asked to review it." in page


def test_a_processing_exception_date_must_lie_in_the_next_thirty_days(key: Key, alice: Any, bob: Any) -> None:
    with on_commit():
        web_client(bob).post(f"/keys/{key.pk}/request/compromise/", {"justification": "Leaked."})
    key.refresh_from_db()
    assert key.state == KeyState.COMPROMISED
    client = web_client(alice)
    response = client.post(
        f"/keys/{key.pk}/request/process_exception/", {"until": "2026-12-01T00:00", "justification": "Recover data."}
    )
    assert field_error(response, "until") == "Allowed until must lie in the next 30 days."
    response = client.post(
        f"/keys/{key.pk}/request/process_exception/", {"until": "2026-12-10T00:00", "justification": "Recover data."}
    )
    req = ApprovalRequest.objects.get(operation="process_exception")
    assert response["Location"] == f"/requests/{req.pk}/"
    assert req.parameters["until"] == "2026-12-10T00:00:00+00:00"


def test_a_grant_names_a_service_account_and_operations_that_fit_the_key(key: Key, alice: Any, svc: Any) -> None:
    client = web_client(alice)
    response = client.post(
        f"/keys/{key.pk}/request/grant/", {"grantee": "svc", "operations": ["sign"], "justification": "API use."}
    )
    assert field_error(response, "operations") == "Choose operations from the list."
    response = client.post(
        f"/keys/{key.pk}/request/grant/",
        {"grantee": "svc", "operations": ["encrypt", "decrypt"], "justification": "API use."},
    )
    req = ApprovalRequest.objects.get(operation="grant")
    assert response["Location"] == f"/requests/{req.pk}/"
    assert req.parameters["operations"] == ["decrypt", "encrypt"]


# --- Deciding -------------------------------------------------------------------------------------


@pytest.fixture
def rotation(key: Key, alice: Any) -> ApprovalRequest:
    return open_request(
        operation="rotate", requester=alice, justification="Yearly rotation.", target_id=str(key.pk), parameters={}
    )


def decide_form(req: ApprovalRequest, otp: str, decision: str = "approve", **extra: str) -> dict[str, str]:
    return {"digest": req.digest, "otp": otp, "decision": decision, **extra}


def test_the_request_page_states_what_will_happen_and_quotes_the_digest(rotation: ApprovalRequest, bob: Any) -> None:
    page = web_client(bob).get(f"/requests/{rotation.pk}/").content.decode()
    assert "Generate a new version of key &#x27;payments&#x27; inside the HSM and make it primary" in page
    assert f'name="digest" value="{rotation.digest}"' in page
    assert rotation.digest in page
    assert "Yearly rotation." in page
    assert 'value="approve"' in page and 'value="reject"' in page


def test_a_custodian_approves_and_the_rotation_runs(rotation: ApprovalRequest, bob: Any, key: Key, clock: Any) -> None:
    client = web_client(bob)
    with on_commit():
        response = client.post(f"/requests/{rotation.pk}/decide/", decide_form(rotation, fresh_otp(bob, clock)))
    assert response["Location"] == f"/requests/{rotation.pk}/"
    rotation.refresh_from_db()
    assert rotation.state == RequestState.EXECUTED
    assert key.versions.count() == 2
    page = client.get(response["Location"]).content.decode()
    # The job ran when the test's on-commit block ended, after the page answered.
    assert "You approved the request. The quorum is complete" in page
    assert "You approved this request on" in page
    assert 'name="otp"' not in page


def test_a_wrong_code_is_refused_next_to_the_code_field(rotation: ApprovalRequest, bob: Any, clock: Any) -> None:
    right = fresh_otp(bob, clock)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    response = web_client(bob).post(f"/requests/{rotation.pk}/decide/", decide_form(rotation, wrong))
    assert response.status_code == 200
    assert "The one-time password is wrong, reused or throttled" in field_error(response, "otp")
    assert not Decision.objects.filter(request=rotation).exists()
    assert AuditEvent.objects.filter(action="request.decision_refused", actor="bob").count() == 1


def test_a_changed_digest_is_refused_above_the_form(rotation: ApprovalRequest, bob: Any, clock: Any) -> None:
    form = decide_form(rotation, fresh_otp(bob, clock))
    form["digest"] = "0" * 64
    response = web_client(bob).post(f"/requests/{rotation.pk}/decide/", form)
    assert "The digest you quoted does not match this request" in form_errors(response)
    assert not Decision.objects.filter(request=rotation).exists()


def test_a_rejection_needs_a_comment_and_then_rejects(rotation: ApprovalRequest, bob: Any, clock: Any) -> None:
    client = web_client(bob)
    response = client.post(f"/requests/{rotation.pk}/decide/", decide_form(rotation, fresh_otp(bob, clock), "reject"))
    assert field_error(response, "comment") == "Say why you reject the request: a comment is required for a rejection."
    response = client.post(
        f"/requests/{rotation.pk}/decide/",
        decide_form(rotation, fresh_otp(bob, clock), "reject", comment="Not this week: freeze."),
    )
    assert response.status_code == 302
    rotation.refresh_from_db()
    assert rotation.state == RequestState.REJECTED
    assert b"Not this week: freeze." in client.get(f"/requests/{rotation.pk}/").content


def test_the_requester_is_refused_with_a_visible_message(rotation: ApprovalRequest, alice: Any, clock: Any) -> None:
    client = web_client(alice)
    page = client.get(f"/requests/{rotation.pk}/").content.decode()
    assert "You made this request." in page
    # No form is offered; a decision posted by hand is refused, and the page says why.
    response = client.post(f"/requests/{rotation.pk}/decide/", decide_form(rotation, fresh_otp(alice, clock)))
    assert (
        "You made this request, and a requester never approves or rejects their own request."
        in response.content.decode()
    )
    assert not Decision.objects.filter(request=rotation).exists()
    from audit.models import AuditEvent

    assert AuditEvent.objects.filter(action="request.decision_refused", actor="alice").exists()


def test_a_second_decision_by_the_same_person_is_refused(key: Key, alice: Any, bob: Any, clock: Any) -> None:
    req = open_request(
        operation="resume" if key.state == KeyState.SUSPENDED else "schedule_destruction",
        requester=alice,
        justification="Retire it.",
        target_id=str(key.pk),
        parameters={},
    )
    client = web_client(bob)
    client.post(f"/requests/{req.pk}/decide/", decide_form(req, fresh_otp(bob, clock)))
    response = client.post(f"/requests/{req.pk}/decide/", decide_form(req, fresh_otp(bob, clock)))
    assert "You already decided on this request" in response.content.decode()
    assert Decision.objects.filter(request=req).count() == 1


def test_an_expired_request_takes_no_decision(rotation: ApprovalRequest, bob: Any, clock: Any) -> None:
    clock.advance(hours=73)
    response = web_client(bob).post(f"/requests/{rotation.pk}/decide/", decide_form(rotation, fresh_otp(bob, clock)))
    assert "The request expired before it collected its approvals." in response.content.decode()
    rotation.refresh_from_db()
    assert rotation.state == RequestState.EXPIRED


def test_a_malformed_decision_is_explained(rotation: ApprovalRequest, bob: Any) -> None:
    client = web_client(bob)
    response = client.post(f"/requests/{rotation.pk}/decide/", {"otp": "12", "decision": "maybe"})
    assert response.status_code == 200
    assert field_error(response, "otp").startswith("The code has exactly 6 digits")
    assert "Choose Approve or Reject." in form_errors(response)
    assert "did not send the request&#x27;s digest" in form_errors(response)


def test_the_requester_cancels_and_nobody_else_can(rotation: ApprovalRequest, alice: Any, bob: Any) -> None:
    client_bob = web_client(bob)
    response = client_bob.post(f"/requests/{rotation.pk}/cancel/")
    assert response.status_code == 302
    assert b"Only the requester can cancel a request." in client_bob.get(response["Location"]).content
    client = web_client(alice)
    client.post(f"/requests/{rotation.pk}/cancel/")
    rotation.refresh_from_db()
    assert rotation.state == RequestState.CANCELLED
    assert b"Cancelled by the requester" in client.get(f"/requests/{rotation.pk}/").content


def test_a_custodian_retries_a_failed_request(olivia: Any, bob: Any, carol: Any, clock: Any, kms: Any) -> None:
    # Registering a token whose PIN variable is not set fails when the approved request runs.
    req = open_request(
        operation="hsm_change",
        requester=olivia,
        justification="Second data centre.",
        target_id="dc2",
        parameters={
            "name": "dc2",
            "module": settings.KMS_PKCS11_MODULE,
            "token_label": kms.token.other_label,
            "pin_env": "KMS_NO_SUCH_VARIABLE_PIN",
        },
    )
    for approver in (bob, carol):
        web_client(approver).post(f"/requests/{req.pk}/decide/", decide_form(req, fresh_otp(approver, clock)))
    req.refresh_from_db()
    assert req.state == RequestState.FAILED
    page = web_client(bob).get(f"/requests/{req.pk}/").content.decode()
    assert "Carrying it out failed" in page and "Retry the step" in page
    client_olivia = web_client(olivia)
    assert "Retry the step" not in client_olivia.get(f"/requests/{req.pk}/").content.decode()
    client_bob = web_client(bob)
    response = client_bob.post(f"/requests/{req.pk}/retry/")
    assert b"The retry failed again" in client_bob.get(response["Location"]).content
    req.refresh_from_db()
    assert req.execution_count == 2
    response = client_olivia.post(f"/requests/{req.pk}/retry/")
    assert b"Only a custodian can retry" in client_olivia.get(response["Location"]).content


# --- Policies, roles, HSMs ------------------------------------------------------------------------


def policy_form(client: Any, path: str = "/policies/standard/propose/", **changes: Any) -> dict[str, Any]:
    """The proposal form with its current values, as the browser would send it, plus `changes`."""
    form = client.get(path).context["form"]
    data: dict[str, Any] = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if isinstance(value, bool):
            if value:
                data[name] = "on"
        elif value is not None:
            data[name] = value
        del field
    data.update(changes)
    return data


def test_a_security_officer_proposes_a_policy_change(olivia: Any, kms: Any) -> None:
    client = web_client(olivia)
    # The standard description says "30 days before destruction": a new wait needs new words
    # (tests/ui/test_followup.py covers the refusal of the old text).
    response = client.post(
        "/policies/standard/propose/",
        policy_form(
            client,
            destruction_wait_days="10",
            description="The default policy, with 10 days before destruction.",
            justification="Shorter wait for test keys.",
        ),
    )
    req = ApprovalRequest.objects.get(operation="policy_change")
    assert response["Location"] == f"/requests/{req.pk}/"
    assert req.parameters["settings"]["destruction_wait_days"] == 10
    assert req.parameters["base_version"] == 1
    assert "destruction_wait_days 30 → ".encode() in client.get(response["Location"]).content


def test_a_proposal_without_a_change_is_refused(olivia: Any, kms: Any) -> None:
    client = web_client(olivia)
    response = client.post("/policies/standard/propose/", policy_form(client, justification="No change."))
    assert "The proposed settings are the same as the current version." in form_errors(response)


def test_policy_numbers_out_of_range_are_named_next_to_their_field(olivia: Any, kms: Any) -> None:
    client = web_client(olivia)
    data = policy_form(client, destruction_wait_days="91", q_generate_approvals="-1", justification="Bad.")
    response = client.post("/policies/standard/propose/", data)
    assert field_error(response, "destruction_wait_days") == "The destruction waiting period must be at most 90."
    assert "At least 0 approvals." in response.content.decode()
    # A long form says at its top which fields to correct, with a link to each.
    summary = response.content.decode().split('form-error-summary"', 1)[1].split("</div>", 1)[0]
    assert 'href="#id_destruction_wait_days"' in summary and 'href="#id_q_generate_approvals"' in summary
    assert "The destruction waiting period must be at most 90." in summary
    data = policy_form(client, q_policy_change_approvals="0", justification="Weaker rule.")
    response = client.post("/policies/standard/propose/", data)
    assert "policy_change always needs at least one approval" in form_errors(response)
    assert not ApprovalRequest.objects.exists()


def test_a_new_policy_is_proposed_with_its_name(olivia: Any, kms: Any) -> None:
    client = web_client(olivia)
    data = policy_form(client, "/policies/new/", name="short-lived", originator_period_days="30")
    data["justification"] = "Keys for the test environment."
    response = client.post("/policies/new/", data)
    req = ApprovalRequest.objects.get(operation="policy_change")
    assert response["Location"] == f"/requests/{req.pk}/"
    assert req.parameters["name"] == "short-lived"
    assert req.parameters["base_version"] is None


def test_role_changes_follow_separation_of_duties(olivia: Any, bob: Any, dave: Any) -> None:
    client = web_client(olivia)
    response = client.post(
        "/custodians/bob/roles/", {"roles": ["custodian", "auditor"], "justification": "Audit duty."}
    )
    assert field_error(response, "roles") == (
        "The auditor role cannot be combined with any other role (separation of duties)."
    )
    response = client.post("/custodians/olivia/roles/", {"roles": ["custodian"], "justification": "Me too."})
    assert "You cannot request a change of your own roles." in form_errors(response)
    response = client.post("/custodians/dave/roles/", {"roles": ["custodian"], "justification": "Same."})
    assert "dave already has exactly these roles." in form_errors(response)
    response = client.post(
        "/custodians/dave/roles/", {"roles": ["custodian", "key_admin"], "justification": "Covers for alice."}
    )
    req = ApprovalRequest.objects.get(operation="custodian_change")
    assert response["Location"] == f"/requests/{req.pk}/"
    assert req.parameters["roles"] == ["custodian", "key_admin"]


def test_an_hsm_registration_names_where_the_pin_comes_from(olivia: Any, kms: Any) -> None:
    client = web_client(olivia)
    base = {"name": "dc2", "token_label": kms.token.other_label, "justification": "Second site."}
    response = client.post("/hsms/register/", {**base, "module": "libsofthsm2.so", "pin_env": "KMS_HSM2_PIN"})
    assert field_error(response, "module") == (
        f"PKCS#11 module must be one of the PKCS#11 modules this installation allows: {settings.KMS_PKCS11_MODULE}."
    )
    response = client.post("/hsms/register/", {**base, "module": settings.KMS_PKCS11_MODULE})
    assert "Give pin_env or pin_file" in field_error(response, "pin_env")
    response = client.post("/hsms/register/", {**base, "module": settings.KMS_PKCS11_MODULE, "pin_env": "KMS_HSM2_PIN"})
    req = ApprovalRequest.objects.get(operation="hsm_change")
    assert response["Location"] == f"/requests/{req.pk}/"
    assert req.parameters["pin_env"] == "KMS_HSM2_PIN"
    assert "pin" not in req.parameters


def test_retiring_an_hsm_needs_a_justification(olivia: Any, kms: Any) -> None:
    client = web_client(olivia)
    response = client.post("/hsms/default/retire/", {"justification": ""})
    assert response["Location"] == "/hsms/"
    assert b"Give a justification to retire an HSM" in client.get("/hsms/").content
    response = client.post("/hsms/default/retire/", {"justification": "Moving out."})
    req = ApprovalRequest.objects.get(operation="hsm_change")
    assert response["Location"] == f"/requests/{req.pk}/"
    assert req.parameters == {"action": "retire", "name": "default"}


def test_a_request_page_for_a_review_links_the_reviewed_action(key: Key, bob: Any, carol: Any) -> None:
    with on_commit():
        web_client(bob).post(f"/keys/{key.pk}/request/suspend/", {"justification": "Suspicious use."})
    review = ApprovalRequest.objects.get(operation="review")
    page = web_client(carol).get(f"/requests/{review.pk}/").content.decode()
    assert "Confirm, after the fact, the immediate suspend of payments." in page
    assert "Reviews" in page and 'name="otp"' in page


def test_unknown_request_ids_in_forms_answer_404(bob: Any, kms: Any) -> None:
    missing = uuid.uuid4()
    assert web_client(bob).post(f"/requests/{missing}/decide/", {"otp": otp_code(bob)}).status_code == 404
    assert web_client(bob).post(f"/requests/{missing}/cancel/").status_code == 404


def test_generate_then_approve_end_to_end_through_the_pages(alice: Any, bob: Any, carol: Any, clock: Any) -> None:
    web_client(alice).post("/keys/new/", generate_form())
    req = ApprovalRequest.objects.get(operation="generate")
    for approver in (bob, carol):
        inbox = web_client(approver).get("/requests/").content.decode()
        assert f"/requests/{req.pk}/" in inbox
        with on_commit():
            web_client(approver).post(f"/requests/{req.pk}/decide/", decide_form(req, fresh_otp(approver, clock)))
    key = Key.objects.get(name="ledger-2026")
    assert key.state == KeyState.ACTIVE
    page = web_client(alice).get(f"/keys/{key.pk}/").content.decode()
    assert key.primary_version.kcv in page
    assert key.primary_version.cka_id in page
    assert "Approved by <strong>bob</strong>" in page and "Approved by <strong>carol</strong>" in page
    assert (clock.now() - dt.timedelta(seconds=1)) < key.primary_version.activated_at


def test_the_new_request_page_lists_what_each_role_may_ask_for(alice: Any, olivia: Any, erin: Any) -> None:
    alice_page = web_client(alice).get("/requests/new/").content.decode()
    assert 'href="/keys/new/"' in alice_page
    assert "rotate" in alice_page and "schedule destruction" in alice_page
    assert 'href="/hsms/register/"' not in alice_page
    olivia_page = web_client(olivia).get("/requests/new/").content.decode()
    assert 'href="/policies/new/"' in olivia_page and 'href="/hsms/register/"' in olivia_page
    assert 'href="/keys/new/"' not in olivia_page
    erin_page = web_client(erin).get("/requests/new/").content.decode()
    assert "Your roles request no key steps." in erin_page
    assert "Security officers request policy, role and HSM changes." in erin_page


def test_the_request_page_shows_times_readably_and_free_text_as_given(alice: Any, bob: Any, clock: Any) -> None:
    req = open_request(
        operation="generate",
        requester=alice,
        justification="Dates in parameters.",
        parameters={
            "name": "dated",
            "algorithm": "AES-256",
            "usage": "encrypt_decrypt",
            "description": "2026-13-45T00:00:00Z",  # looks like a time, is not one: text all the same
            "activate_at": "2026-12-24T18:30:00+01:00",
        },
    )
    response = web_client(bob).get(f"/requests/{req.pk}/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "2026-13-45T00:00:00Z" in page
    assert "2026-12-24 17:30:00 UTC" in page


def test_a_policy_proposal_names_every_problem_at_once(olivia: Any, kms: Any) -> None:
    client = web_client(olivia)
    data = policy_form(
        client,
        destruction_wait_days="91",
        originator_period_days="100",
        recipient_period_days="50",
        auto_rotate="on",
        rotation_period_days="200",
        justification="Bad.",
    )
    response = client.post("/policies/standard/propose/", data)
    assert field_error(response, "destruction_wait_days") == "The destruction waiting period must be at most 90."
    assert field_error(response, "recipient_period_days").startswith("The recipient-usage period must not be shorter")
    assert field_error(response, "rotation_period_days").startswith("The rotation period must not exceed")
    assert not ApprovalRequest.objects.exists()
