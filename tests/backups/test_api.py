"""The backups API: reads for every human role, escrow and import requests, share entry, export download."""

from __future__ import annotations

import base64
import secrets
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from lifecycle.hsm import default_backend
from lifecycle.models import Export, Restore, RestoreState
from tests.backups.conftest import back_up, open_restore
from tests.conftest import api_client, fresh_otp
from tests.lifecycle.helpers import generate_key, make_policy, on_commit, run_operation

pytestmark = pytest.mark.django_db


def test_humans_list_backups_without_blobs(
    cast: SimpleNamespace, clock: Any, escrow: Any, django_assert_num_queries: Any
) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="payments")
    backup = back_up(key, cast, clock)
    for user in (cast.alice, cast.bob, cast.olivia, cast.erin):
        response = api_client(user).get("/api/v1/backups/", {"key": str(key.pk)})
        assert response.status_code == 200
        row = response.json()["results"][0]
        assert row["id"] == str(backup.pk) and row["kcv"] == backup.kcv and row["version"] == 1
        assert "wrapped" not in row
    client = api_client(cast.erin)
    client.get("/api/v1/backups/")
    with django_assert_num_queries(4):  # token (with its user), roles, count, one page with joins
        client.get("/api/v1/backups/")
    detail = client.get(f"/api/v1/backups/{backup.pk}/")
    assert detail.status_code == 200 and detail.json()["kek"] == "backup-kek"


def test_outsiders_service_accounts_and_bad_ids_are_refused(
    cast: SimpleNamespace, clock: Any, svc: Any, escrow: Any
) -> None:
    assert api_client(cast.mallory).get("/api/v1/backups/").status_code == 403
    assert api_client(svc).get("/api/v1/backups/").status_code == 403
    from rest_framework.test import APIClient

    assert APIClient().get("/api/v1/backups/").status_code == 401
    client = api_client(cast.erin)
    for path in ("/api/v1/backups/not-a-uuid/", f"/api/v1/backups/{escrow.pk}/", "/api/v1/backups/restores/x/"):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert client.get("/api/v1/backups/", {"key": "nope"}).status_code == 404
    assert client.delete("/api/v1/backups/escrows/").status_code == 405


def test_escrow_ceremonies_show_holders_and_fingerprints_only(cast: SimpleNamespace, clock: Any, escrow: Any) -> None:
    response = api_client(cast.erin).get(f"/api/v1/backups/escrows/{escrow.pk}/")
    assert response.status_code == 200
    body = response.json()
    assert [s["holder"] for s in body["shares"]] == ["bob", "carol", "dave"]
    assert "sealed" not in str(body) and "wrapped_kek" not in body


def test_a_key_admin_requests_a_ceremony_and_others_cannot(cast: SimpleNamespace, clock: Any, kek: Any) -> None:
    body = {"kek": str(kek.pk), "custodians": ["bob", "carol", "dave"], "threshold": 2, "justification": "first escrow"}
    response = api_client(cast.alice).post("/api/v1/backups/escrows/", body, format="json")
    assert response.status_code == 202
    assert response.json()["operation"] == "escrow" and response.json()["state"] == "pending"
    for user in (cast.bob, cast.erin):
        refused = api_client(user).post("/api/v1/backups/escrows/", body, format="json")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "role_required"
    read_only = api_client(cast.alice, scopes=["read"]).post("/api/v1/backups/escrows/", body, format="json")
    assert read_only.status_code == 403 and read_only.json()["error"]["code"] == "scope_required"
    bad = api_client(cast.olivia).post("/api/v1/backups/escrows/", {**body, "threshold": "two"}, format="json")
    assert bad.status_code == 400 and "threshold" in bad.json()["error"]["details"]


def test_custodians_enter_shares_through_the_api(
    cast: SimpleNamespace, clock: Any, escrow: Any, shares: dict[str, str]
) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="payments")
    backup = back_up(key, cast, clock)
    default_backend().destroy(key.primary_version.cka_id_bytes)
    req = open_restore(key, backup, cast, clock)
    restore = Restore.objects.get(request=req)
    url = f"/api/v1/backups/restores/{restore.pk}/shares/"

    no_otp = api_client(cast.bob).post(url, {"share": shares["bob"]}, format="json")
    assert no_otp.status_code == 400 and "otp" in no_otp.json()["error"]["details"]
    not_custodian = api_client(cast.alice).post(url, {"share": shares["bob"], "otp": "123456"}, format="json")
    assert not_custodian.status_code == 403 and not_custodian.json()["error"]["code"] == "not_eligible"
    wrong_scope = api_client(cast.bob, scopes=["read", "request"]).post(
        url, {"share": shares["bob"], "otp": "1"}, format="json"
    )
    assert wrong_scope.status_code == 403
    with on_commit():
        first = api_client(cast.bob).post(
            url, {"share": shares["bob"], "otp": fresh_otp(cast.bob, clock)}, format="json"
        )
        assert first.status_code == 200 and len(first.json()["shares_entered"]) == 1
        dup = api_client(cast.bob).post(url, {"share": shares["bob"], "otp": fresh_otp(cast.bob, clock)}, format="json")
        assert dup.status_code == 409 and dup.json()["error"]["code"] == "share_duplicate"
        second = api_client(cast.carol).post(
            url, {"share": shares["carol"], "otp": fresh_otp(cast.carol, clock)}, format="json"
        )
    assert second.status_code == 200
    restore.refresh_from_db()
    assert restore.state == RestoreState.RESTORED
    assert api_client(cast.erin).get(f"/api/v1/backups/restores/{restore.pk}/").json()["restored_kcv"] == backup.kcv


def test_a_restore_is_opened_through_the_keys_api(
    cast: SimpleNamespace, clock: Any, escrow: Any, shares: dict[str, str]
) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="payments")
    backup = back_up(key, cast, clock)
    response = api_client(cast.alice).post(
        f"/api/v1/keys/{key.pk}/restore/", {"backup": str(backup.pk), "justification": "test"}, format="json"
    )
    assert response.status_code == 202 and response.json()["operation"] == "restore"


@pytest.mark.usefixtures("import_key")
def test_the_import_key_and_an_import_request(cast: SimpleNamespace, clock: Any) -> None:
    info = api_client(cast.alice).get("/api/v1/backups/imports/import-key/")
    assert info.status_code == 200
    public = serialization.load_pem_public_key(info.json()["public_key_pem"].encode())
    transport, value = secrets.token_bytes(32), secrets.token_bytes(32)
    from cryptography.hazmat.primitives import cmac
    from cryptography.hazmat.primitives.ciphers import algorithms

    mac = cmac.CMAC(algorithms.AES(value))
    mac.update(bytes(16))
    body = {
        "name": "byok",
        "algorithm": "AES-256",
        "usage": "encrypt_decrypt",
        "expected_kcv": mac.finalize()[:3].hex(),
        "encrypted_transport_key": base64.b64encode(
            public.encrypt(
                transport, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
            )
        ).decode(),
        "wrapped_key": base64.b64encode(aes_key_wrap(transport, value)).decode(),
        "justification": "partner key",
    }
    response = api_client(cast.alice).post("/api/v1/backups/imports/", body, format="json")
    assert response.status_code == 202
    assert response.json()["parameters"]["expected_kcv"] == body["expected_kcv"]
    assert api_client(cast.bob).post("/api/v1/backups/imports/", body, format="json").status_code == 403
    bad = api_client(cast.alice).post(
        "/api/v1/backups/imports/", {**body, "name": "byok2", "wrapped_key": "@@"}, format="json"
    )
    assert bad.status_code == 400 and "wrapped_key" in bad.json()["error"]["details"]
    assert api_client(cast.alice).get("/api/v1/backups/imports/import-key/", {"hsm": "nope"}).status_code == 400


def test_only_the_requester_downloads_an_export(cast: SimpleNamespace, clock: Any) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    make_policy("partners", exportable=True)
    key = generate_key(cast.alice, cast.approvers, clock, name="partner", policy="partners")
    recipient = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = recipient.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    run_operation(
        "export", key, cast.alice, cast.approvers, clock, parameters={"recipient": "Acme", "recipient_public_key": pem}
    )
    export = Export.objects.get()
    listed = api_client(cast.erin).get("/api/v1/backups/exports/").json()["results"][0]
    assert listed["id"] == str(export.pk) and "wrapped_key" not in listed
    mine = api_client(cast.alice).get(f"/api/v1/backups/exports/{export.pk}/download/")
    assert mine.status_code == 200 and mine.json()["wrapped_key"] == export.wrapped_key
    assert api_client(cast.erin).get(f"/api/v1/backups/exports/{export.pk}/download/").status_code == 403
