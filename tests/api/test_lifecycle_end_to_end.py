"""A key's whole life driven only through the REST API, as a client written from the SPEC would.

alice (key_admin) asks, bob and carol (custodians) approve with their TOTP codes, a service account
uses the key; the beat sweep (the scheduler) carries out the destruction when its day comes.
"""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

import pytest

from lifecycle.hsm import default_backend
from lifecycle.sweep import sweep
from tests.api.conftest import API, assert_error, on_commit
from tests.conftest import api_client, fresh_otp

pytestmark = pytest.mark.django_db


def test_a_key_from_request_to_certificate_of_destruction(cast: SimpleNamespace, clock: Any) -> None:
    alice = api_client(cast.alice, scopes=["read", "request"])
    service = api_client(cast.svc, scopes=["read", "use"])

    def approve_all(request: dict[str, Any], *approvers: Any) -> dict[str, Any]:
        body = request
        for user in approvers:
            client = api_client(user, scopes=["read", "approve"])
            # An approver reads the request first, then quotes the digest they saw.
            shown = client.get(f"{API}/requests/{request['id']}/").json()
            with on_commit():
                response = client.post(
                    f"{API}/requests/{request['id']}/approve/",
                    {"digest": shown["digest"], "otp": fresh_otp(user, clock), "comment": "ok"},
                    format="json",
                )
            assert response.status_code == 200, response.json()
            body = response.json()
        return api_client(cast.erin).get(f"{API}/requests/{body['id']}/").json()

    # 1. Generation, dual-controlled.
    opened = alice.post(
        f"{API}/keys/",
        {
            "name": "ledger",
            "algorithm": "AES-256",
            "usage": "encrypt_decrypt",
            "policy": "standard",
            "justification": "ledger encryption",
        },
        format="json",
    )
    assert opened.status_code == 202
    done = approve_all(opened.json(), cast.bob, cast.carol)
    assert done["state"] == "executed"
    key_id = done["result"]["key_id"]
    key = alice.get(f"{API}/keys/{key_id}/").json()
    assert key["state"] == "active" and key["versions"][0]["kcv"]
    job = alice.get(f"{API}/jobs/{done['result']['job']}/").json()
    assert job["status"] == "succeeded"

    # 2. The service account gets a grant, and uses the key.
    granted = alice.post(
        f"{API}/keys/{key_id}/grant/",
        {"justification": "ledger service", "grantee": "svc", "operations": ["encrypt", "decrypt"]},
        format="json",
    )
    assert granted.status_code == 202
    approve_all(granted.json(), cast.bob)
    assert [k["id"] for k in service.get(f"{API}/keys/").json()["results"]] == [key_id]
    plaintext = base64.b64encode(b"entry 1: +100.00").decode()
    first = service.post(f"{API}/keys/{key_id}/encrypt/", {"plaintext": plaintext}, format="json").json()
    assert first["key_version"] == 1

    # 3. Rotation: new data under v2, old data still readable.
    rotation = alice.post(f"{API}/keys/{key_id}/rotate/", {"justification": "yearly rotation"}, format="json")
    assert rotation.status_code == 202
    approve_all(rotation.json(), cast.bob)
    second = service.post(f"{API}/keys/{key_id}/encrypt/", {"plaintext": plaintext}, format="json").json()
    assert second["ciphertext"].startswith("kms:v2:")
    for ciphertext in (first["ciphertext"], second["ciphertext"]):
        back = service.post(f"{API}/keys/{key_id}/decrypt/", {"ciphertext": ciphertext}, format="json").json()
        assert back["plaintext"] == plaintext
    versions = service.get(f"{API}/keys/{key_id}/versions/").json()["results"]
    assert [(v["number"], v["state"]) for v in versions] == [(1, "deactivated"), (2, "active")]
    cka_ids = [bytes.fromhex(v["hsm_object_id"]) for v in versions]
    assert all(default_backend().exists(cka_id) for cka_id in cka_ids)

    # 4. Scheduled destruction: nothing may use the key during the waiting period.
    destruction = alice.post(
        f"{API}/keys/{key_id}/schedule-destruction/", {"justification": "ledger retired"}, format="json"
    )
    assert destruction.status_code == 202
    approve_all(destruction.json(), cast.bob, cast.carol)
    key = alice.get(f"{API}/keys/{key_id}/").json()
    assert key["destroy_after"] == "2027-01-03T09:03:00Z" or key["destroy_after"].startswith("2027-01-03")
    assert_error(
        service.post(f"{API}/keys/{key_id}/decrypt/", {"ciphertext": first["ciphertext"]}, format="json"),
        409,
        "use_denied",
    )

    # 5. The waiting period passes; the scheduler destroys the objects and issues the certificate.
    clock.advance(days=31)
    with on_commit():
        sweep()
    key = alice.get(f"{API}/keys/{key_id}/").json()
    assert key["state"] == "destroyed" and key["destroyed_at"]
    assert [v["state"] for v in key["versions"]] == ["destroyed", "destroyed"]
    assert all(v["destroyed_at"] for v in key["versions"])
    certificate = key["destruction_certificate"]
    assert certificate["digest"] and certificate["body"]["key"]["name"] == "ledger"
    assert [d["approver"] for d in certificate["body"]["request"]["decisions"]] == ["bob", "carol"]
    assert {v["cka_id"] for v in certificate["body"]["versions"]} == {c.hex() for c in cka_ids}
    assert not any(default_backend().exists(cka_id) for cka_id in cka_ids)
    assert_error(
        service.post(f"{API}/keys/{key_id}/decrypt/", {"ciphertext": second["ciphertext"]}, format="json"), 409
    )

    # 6. The history tells it all.
    timeline = api_client(cast.erin).get(f"{API}/keys/{key_id}/timeline/?page_size=100").json()["results"]
    # Key-level state changes (steps such as "destruction scheduled" change no state: to_state "").
    states = [e["to_state"] for e in timeline if e["version"] is None and e["to_state"]]
    assert states == ["pre_activation", "active", "destroyed"]
