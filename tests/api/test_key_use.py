"""Key use through the API: encrypt/decrypt, sign/verify, mac/verify-mac on the real SoftHSM token."""

from __future__ import annotations

import base64
import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from audit.models import AuditEvent
from lifecycle.hsm import pkcs11 as pkcs11_driver
from lifecycle.models import Key, KeyUsage
from lifecycle.services import key_use
from lifecycle.states import KeyState
from lifecycle.sweep import sweep
from tests.api.conftest import API, assert_error, grant, lenient_policy, make_key, on_commit, run
from tests.conftest import api_client

pytestmark = pytest.mark.django_db


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post(client: Any, key: Key, operation: str, body: dict[str, Any]) -> Any:
    return client.post(f"{API}/keys/{key.pk}/{operation}/", body, format="json")


def encrypt(client: Any, key: Key, plaintext: bytes, **extra: Any) -> dict[str, Any]:
    response = post(client, key, "encrypt", {"plaintext": b64(plaintext), **extra})
    assert response.status_code == 200, response.json()
    return response.json()


def decrypt(client: Any, key: Key, ciphertext: str, **extra: Any) -> Any:
    return post(client, key, "decrypt", {"ciphertext": ciphertext, **extra})


@pytest.fixture
def user_of(cast: SimpleNamespace, aes_key: Key, clock: Any) -> Any:
    """svc with a grant to encrypt and decrypt with the AES key."""
    grant(aes_key, cast.svc, ["encrypt", "decrypt"], cast.alice, cast.approvers, clock)
    return api_client(cast.svc, scopes=["use"])


# --- encrypt / decrypt ----------------------------------------------------------------------------


def test_it_encrypts_and_decrypts_with_a_grant(user_of: Any, aes_key: Key) -> None:
    result = encrypt(user_of, aes_key, b"card 4111 1111 1111 1111")
    assert result["key_version"] == 1
    assert result["ciphertext"].startswith("kms:v1:")
    # nonce (12) + ciphertext (24) + tag (16)
    assert len(base64.b64decode(result["ciphertext"].split(":", 2)[2])) == 12 + 24 + 16
    response = decrypt(user_of, aes_key, result["ciphertext"])
    assert response.status_code == 200
    assert base64.b64decode(response.json()["plaintext"]) == b"card 4111 1111 1111 1111"


def test_it_uses_a_fresh_nonce_every_time(user_of: Any, aes_key: Key) -> None:
    first = encrypt(user_of, aes_key, b"same")["ciphertext"]
    second = encrypt(user_of, aes_key, b"same")["ciphertext"]
    assert first != second
    assert base64.b64decode(first.split(":", 2)[2])[:12] != base64.b64decode(second.split(":", 2)[2])[:12]


def test_old_ciphertext_still_decrypts_after_rotation_and_new_ciphertext_names_v2(
    cast: SimpleNamespace, user_of: Any, aes_key: Key, clock: Any
) -> None:
    old = encrypt(user_of, aes_key, b"before rotation")["ciphertext"]
    assert run("rotate", aes_key, cast.alice, cast.approvers, clock).state == "executed"
    new = encrypt(user_of, aes_key, b"after rotation")
    assert new["key_version"] == 2
    assert new["ciphertext"].startswith("kms:v2:")
    # v1 is deactivated now: it still decrypts what it protected.
    assert aes_key.versions.get(number=1).state == KeyState.DEACTIVATED
    response = decrypt(user_of, aes_key, old)
    assert response.status_code == 200
    assert response.json() == {"plaintext": b64(b"before rotation"), "key_version": 1}
    assert base64.b64decode(decrypt(user_of, aes_key, new["ciphertext"]).json()["plaintext"]) == b"after rotation"


def test_a_deactivated_key_decrypts_but_refuses_to_encrypt(
    cast: SimpleNamespace, user_of: Any, aes_key: Key, clock: Any
) -> None:
    ciphertext = encrypt(user_of, aes_key, b"kept for later")["ciphertext"]
    assert run("deactivate", aes_key, cast.alice, cast.approvers, clock).state == "executed"
    assert_error(post(user_of, aes_key, "encrypt", {"plaintext": b64(b"new")}), 409, "use_denied")
    response = decrypt(user_of, aes_key, ciphertext)
    assert response.status_code == 200
    assert base64.b64decode(response.json()["plaintext"]) == b"kept for later"


@pytest.mark.parametrize("operation", ["suspend", "compromise"])
def test_suspended_and_compromised_keys_refuse_all_use(
    cast: SimpleNamespace, user_of: Any, aes_key: Key, clock: Any, operation: str
) -> None:
    ciphertext = encrypt(user_of, aes_key, b"x")["ciphertext"]
    assert run(operation, aes_key, cast.alice, cast.approvers, clock).state == "executed"
    error = assert_error(post(user_of, aes_key, "encrypt", {"plaintext": b64(b"y")}), 409, "use_denied")
    assert aes_key.name in error["message"]
    assert_error(decrypt(user_of, aes_key, ciphertext), 409, "use_denied")


def test_a_compromised_key_decrypts_only_under_an_approved_exception(
    cast: SimpleNamespace, user_of: Any, aes_key: Key, clock: Any
) -> None:
    ciphertext = encrypt(user_of, aes_key, b"evidence")["ciphertext"]
    run("compromise", aes_key, cast.alice, cast.approvers, clock)
    until = (clock.now() + dt.timedelta(days=2)).isoformat()
    assert run("process_exception", aes_key, cast.alice, cast.approvers, clock, {"until": until}).state == "executed"
    assert decrypt(user_of, aes_key, ciphertext).status_code == 200
    # Never encrypt, exception or not.
    assert_error(post(user_of, aes_key, "encrypt", {"plaintext": b64(b"y")}), 409, "use_denied")
    clock.advance(days=3)
    assert_error(decrypt(user_of, aes_key, ciphertext), 409, "use_denied")


def test_a_key_waiting_for_destruction_and_a_destroyed_key_refuse_use(
    cast: SimpleNamespace, user_of: Any, aes_key: Key, clock: Any
) -> None:
    ciphertext = encrypt(user_of, aes_key, b"x")["ciphertext"]
    assert run("schedule_destruction", aes_key, cast.alice, cast.approvers, clock).state == "executed"
    assert_error(decrypt(user_of, aes_key, ciphertext), 409, "use_denied")
    clock.advance(days=31)
    with on_commit():
        sweep()
    aes_key.refresh_from_db()
    assert aes_key.state == KeyState.DESTROYED
    error = assert_error(decrypt(user_of, aes_key, ciphertext), 409, "use_denied")
    assert "destroyed" in error["message"]
    assert_error(post(user_of, aes_key, "encrypt", {"plaintext": b64(b"y")}), 409, "use_denied")


def test_a_tampered_ciphertext_or_wrong_aad_is_a_400_not_a_500(user_of: Any, aes_key: Key) -> None:
    result = encrypt(user_of, aes_key, b"with context", aad=b64(b"order-17"))
    assert decrypt(user_of, aes_key, result["ciphertext"], aad=b64(b"order-17")).status_code == 200
    assert_error(decrypt(user_of, aes_key, result["ciphertext"], aad=b64(b"order-18")), 400, "invalid_ciphertext")
    assert_error(decrypt(user_of, aes_key, result["ciphertext"]), 400, "invalid_ciphertext")
    raw = bytearray(base64.b64decode(result["ciphertext"].split(":", 2)[2]))
    raw[20] ^= 0x01
    tampered = f"kms:v1:{b64(bytes(raw))}"
    assert_error(decrypt(user_of, aes_key, tampered, aad=b64(b"order-17")), 400, "invalid_ciphertext")
    # Too short to hold a nonce and a tag.
    assert_error(decrypt(user_of, aes_key, f"kms:v1:{b64(b'short')}"), 400, "invalid_ciphertext")
    # The failed authentication is on the record, without the data.
    event = AuditEvent.objects.filter(action="key.use_failed").last()
    assert event is not None and event.details["operation"] == "decrypt"
    assert "order-1" not in str(event.details)


def test_a_ciphertext_of_another_key_does_not_decrypt(
    cast: SimpleNamespace, user_of: Any, aes_key: Key, clock: Any
) -> None:
    other = make_key(cast.alice, cast.approvers, clock, name="other-dek")
    grant(other, cast.svc, ["encrypt", "decrypt"], cast.alice, cast.approvers, clock)
    ciphertext = encrypt(user_of, other, b"for the other key")["ciphertext"]
    assert_error(decrypt(user_of, aes_key, ciphertext), 400, "invalid_ciphertext")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"plaintext": "not base64!"},
        {"plaintext": "aGVsbG8"},  # missing padding
        {"plaintext": 12345},
        {"plaintext": None},
        {"plaintext": ["aGk="]},
        {"plaintext": "aGk=", "aad": "%%%"},
        {"plaintext": b64(b"x" * (64 * 1024 + 1))},
        {"plaintext": "A" * 200_000},
    ],
)
def test_encrypt_refuses_malformed_input_with_a_400(user_of: Any, aes_key: Key, body: dict[str, Any]) -> None:
    error = assert_error(post(user_of, aes_key, "encrypt", body), 400, "invalid")
    assert error["details"]


@pytest.mark.parametrize(
    "ciphertext",
    ["", "kms:v1:", "kms:v0:AAAA", "kms:vx:AAAA", "kms:v1:not base64", "kms:v1:AAA", "v1:AAAA", "x" * 100],
)
def test_decrypt_refuses_what_is_not_a_ciphertext(user_of: Any, aes_key: Key, ciphertext: str) -> None:
    response = decrypt(user_of, aes_key, ciphertext)
    assert response.status_code == 400, response.json()
    assert_error(response, 400)


def test_a_ciphertext_naming_an_unknown_version_is_refused_and_recorded(user_of: Any, aes_key: Key) -> None:
    result = encrypt(user_of, aes_key, b"x")["ciphertext"]
    response = decrypt(user_of, aes_key, result.replace("kms:v1:", "kms:v9:"))
    assert_error(response, 400, "unknown_version")
    assert AuditEvent.objects.filter(action="key.use_denied", details__version=9).exists()


def test_it_takes_exactly_64_kib_and_empty_plaintext(user_of: Any, aes_key: Key) -> None:
    big = encrypt(user_of, aes_key, b"\x00" * (64 * 1024))
    assert base64.b64decode(decrypt(user_of, aes_key, big["ciphertext"]).json()["plaintext"]) == b"\x00" * 65536
    empty = encrypt(user_of, aes_key, b"")
    assert decrypt(user_of, aes_key, empty["ciphertext"]).json()["plaintext"] == ""


# --- who may use a key ----------------------------------------------------------------------------


def test_a_service_account_without_a_grant_is_refused_and_the_denial_is_audited(
    cast: SimpleNamespace, aes_key: Key
) -> None:
    client = api_client(cast.svc, scopes=["use"])
    # Not found, as when it reads the key: a service account does not learn of keys it was not granted.
    error = assert_error(post(client, aes_key, "encrypt", {"plaintext": b64(b"secret words")}), 404, "not_found")
    assert aes_key.name not in error["message"]
    event = AuditEvent.objects.filter(action="key.use_denied").last()
    assert event.actor == "svc" and event.via == "api"
    assert event.details == {
        "key": aes_key.name,
        "operation": "encrypt",
        "version": None,
        "reason": f"svc holds no grant on key {aes_key.name}",
    }
    assert "secret words" not in str(event.details) and b64(b"secret words") not in str(event.details)


def test_a_grant_covers_only_its_operations_and_ends_when_revoked(
    cast: SimpleNamespace, aes_key: Key, clock: Any
) -> None:
    grant(aes_key, cast.svc, ["encrypt"], cast.alice, cast.approvers, clock)
    client = api_client(cast.svc, scopes=["use"])
    ciphertext = encrypt(client, aes_key, b"x")["ciphertext"]
    assert_error(decrypt(client, aes_key, ciphertext), 403, "not_granted")
    # An operation no grant could allow is refused for what the key is, not for the grant.
    response = post(client, aes_key, "sign", {"message": b64(b"x")})
    assert_error(response, 409, "use_denied")
    assert "is a encrypt_decrypt key and cannot sign" in response.json()["error"]["message"]
    grant(aes_key, cast.svc, [], cast.alice, cast.approvers, clock)  # an empty list revokes
    assert_error(post(client, aes_key, "encrypt", {"plaintext": b64(b"x")}), 404, "not_found")


def test_the_owner_may_use_their_key_and_other_roles_may_not(cast: SimpleNamespace, aes_key: Key) -> None:
    owner = api_client(cast.alice)
    ciphertext = encrypt(owner, aes_key, b"owner check")["ciphertext"]
    assert decrypt(owner, aes_key, ciphertext).status_code == 200
    for user in (cast.bob, cast.olivia, cast.erin, cast.mallory):
        assert_error(decrypt(api_client(user), aes_key, ciphertext), 403, "not_granted")
    assert AuditEvent.objects.filter(action="key.use_denied").count() == 4


def test_another_key_admin_may_not_use_a_key_they_do_not_own(cast: SimpleNamespace, aes_key: Key) -> None:
    from tests.conftest import make_user

    other_admin = make_user("kate", {"key_admin"})
    assert_error(post(api_client(other_admin), aes_key, "encrypt", {"plaintext": b64(b"x")}), 403, "not_granted")


def test_key_use_needs_the_use_scope(cast: SimpleNamespace, aes_key: Key, clock: Any) -> None:
    grant(aes_key, cast.svc, ["encrypt"], cast.alice, cast.approvers, clock)
    client = api_client(cast.svc, scopes=["read"])
    assert_error(post(client, aes_key, "encrypt", {"plaintext": b64(b"x")}), 403, "scope_required")


def test_key_use_needs_credentials(client: Any, aes_key: Key) -> None:
    response = client.post(f"{API}/keys/{aes_key.pk}/encrypt/", {"plaintext": "aGk="}, content_type="application/json")
    assert_error(response, 401, "not_authenticated")


@pytest.mark.parametrize("key_id", ["00000000-0000-4000-8000-000000000000", "not-a-uuid", "1"])
def test_an_unknown_key_is_a_404(user_of: Any, key_id: str) -> None:
    response = user_of.post(f"{API}/keys/{key_id}/encrypt/", {"plaintext": "aGk="}, format="json")
    assert_error(response, 404, "not_found")


def test_an_operation_that_does_not_fit_the_key_is_refused(cast: SimpleNamespace, aes_key: Key, user_of: Any) -> None:
    assert_error(post(api_client(cast.alice), aes_key, "sign", {"message": b64(b"x")}), 409, "use_denied")


# --- counting and the hot path --------------------------------------------------------------------


def test_every_use_is_counted_per_version_client_operation_and_day(
    user_of: Any, aes_key: Key, cast: SimpleNamespace, clock: Any
) -> None:
    ciphertexts = [encrypt(user_of, aes_key, b"x")["ciphertext"] for _ in range(3)]
    decrypt(user_of, aes_key, ciphertexts[0])
    clock.advance(days=1)
    encrypt(user_of, aes_key, b"x")
    rows = {
        (row.operation, row.day.isoformat()): row.count
        for row in KeyUsage.objects.filter(version__key=aes_key, client=cast.svc)
    }
    assert rows == {("encrypt", "2026-12-04"): 3, ("decrypt", "2026-12-04"): 1, ("encrypt", "2026-12-05"): 1}
    # Refusals are not uses.
    assert_error(decrypt(user_of, aes_key, "kms:v1:AAAA"), 400)
    assert KeyUsage.objects.get(operation="decrypt").count == 1


def test_the_hot_path_runs_a_fixed_handful_of_queries_and_never_searches_the_token(
    user_of: Any, aes_key: Key, django_assert_num_queries: Any, monkeypatch: Any
) -> None:
    # Warm up: open the session, cache the handle, stamp last-used, make today's usage rows.
    decrypt(user_of, aes_key, encrypt(user_of, aes_key, b"warm-up")["ciphertext"])

    state = pkcs11_driver._process.tokens[(aes_key.hsm.module, aes_key.hsm.token_label)]
    searches = []

    class CountingSession:
        """The real session, with every object search counted."""

        def __init__(self, session: Any) -> None:
            self._session = session

        def get_objects(self, *args: Any, **kwargs: Any) -> Any:
            searches.append(args)
            return self._session.get_objects(*args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._session, name)

    monkeypatch.setattr(state, "session", CountingSession(state.session))
    # token + user, the user's roles, the key with its primary version and HSM, the grant, the count.
    with django_assert_num_queries(5):
        ciphertext = encrypt(user_of, aes_key, b"hot")["ciphertext"]
    with django_assert_num_queries(5):
        assert decrypt(user_of, aes_key, ciphertext).status_code == 200
    assert searches == []


# --- sign / verify --------------------------------------------------------------------------------


def public_key_of(client: Any, key: Key, number: int = 1) -> Any:
    versions = client.get(f"{API}/keys/{key.pk}/versions/").json()["results"]
    pem = next(v for v in versions if v["number"] == number)["public_key_pem"]
    return serialization.load_pem_public_key(pem.encode())


@pytest.mark.parametrize("algorithm", ["RSA-2048", "EC-P256", "EC-P384"])
def test_signatures_interoperate_with_cryptography(cast: SimpleNamespace, clock: Any, algorithm: str) -> None:
    key = make_key(
        cast.alice, cast.approvers, clock, name=f"signer-{algorithm}", algorithm=algorithm, usage="sign_verify"
    )
    grant(key, cast.svc, ["sign", "verify"], cast.alice, cast.approvers, clock)
    client = api_client(cast.svc, scopes=["use", "read"])
    message = b"invoice 2026-0042, total 1234.56 EUR"
    response = post(client, key, "sign", {"message": b64(message)})
    assert response.status_code == 200, response.json()
    assert response.json()["key_version"] == 1
    signature = base64.b64decode(response.json()["signature"])

    public = public_key_of(client, key)
    if algorithm.startswith("RSA"):
        assert isinstance(public, rsa.RSAPublicKey)
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        public.verify(signature, message, pss, hashes.SHA256())
        with pytest.raises(InvalidSignature):
            public.verify(signature, message + b"!", pss, hashes.SHA256())
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        digest = hashes.SHA384() if algorithm == "EC-P384" else hashes.SHA256()
        public.verify(signature, message, ec.ECDSA(digest))  # DER-encoded
        with pytest.raises(InvalidSignature):
            public.verify(signature, message + b"!", ec.ECDSA(digest))

    verify = {"message": b64(message), "signature": b64(signature)}
    assert post(client, key, "verify", verify).json() == {"valid": True, "key_version": 1}
    assert post(client, key, "verify", {**verify, "message": b64(message + b"!")}).json()["valid"] is False
    assert post(client, key, "verify", {**verify, "signature": b64(b"\x30\x02junk")}).json()["valid"] is False
    assert post(client, key, "verify", {**verify, "key_version": 1}).json()["valid"] is True
    assert_error(post(client, key, "verify", {**verify, "key_version": 7}), 400, "unknown_version")
    assert_error(post(client, key, "verify", {"message": b64(message)}), 400, "invalid")
    assert_error(post(client, key, "verify", {**verify, "key_version": "one"}), 400, "invalid")
    assert_error(post(client, key, "verify", {**verify, "key_version": 10**30}), 400, "invalid")
    assert_error(post(client, key, "verify", {**verify, "key_version": 0}), 400, "invalid")


def test_a_signature_made_by_cryptography_with_another_key_does_not_verify(cast: SimpleNamespace, clock: Any) -> None:
    key = make_key(cast.alice, cast.approvers, clock, name="ec-signer", algorithm="EC-P256", usage="sign_verify")
    stranger = ec.generate_private_key(ec.SECP256R1())
    message = b"hello"
    signature = stranger.sign(message, ec.ECDSA(hashes.SHA256()))
    response = post(api_client(cast.alice), key, "verify", {"message": b64(message), "signature": b64(signature)})
    assert response.json() == {"valid": False, "key_version": 1}


def test_an_old_version_verifies_after_rotation_but_only_the_primary_signs(cast: SimpleNamespace, clock: Any) -> None:
    key = make_key(cast.alice, cast.approvers, clock, name="rotating-signer", algorithm="EC-P256", usage="sign_verify")
    client = api_client(cast.alice)
    old = post(client, key, "sign", {"message": b64(b"m")}).json()
    run("rotate", key, cast.alice, cast.approvers, clock)
    new = post(client, key, "sign", {"message": b64(b"m")}).json()
    assert (old["key_version"], new["key_version"]) == (1, 2)
    body = {"message": b64(b"m"), "signature": old["signature"]}
    assert post(client, key, "verify", {**body, "key_version": 1}).json() == {"valid": True, "key_version": 1}
    # Against the primary (v2) the old signature does not hold.
    assert post(client, key, "verify", body).json() == {"valid": False, "key_version": 2}


# --- mac / verify-mac -----------------------------------------------------------------------------


def test_mac_and_verify_mac(cast: SimpleNamespace, clock: Any) -> None:
    key = make_key(cast.alice, cast.approvers, clock, name="webhook-mac", algorithm="HMAC-SHA256", usage="mac")
    grant(key, cast.svc, ["mac", "verify_mac"], cast.alice, cast.approvers, clock)
    client = api_client(cast.svc, scopes=["use"])
    response = post(client, key, "mac", {"message": b64(b"payload")})
    assert response.status_code == 200
    tag = response.json()["mac"]
    assert len(base64.b64decode(tag)) == 32 and response.json()["key_version"] == 1
    assert post(client, key, "mac", {"message": b64(b"payload")}).json()["mac"] == tag  # deterministic
    ok = post(client, key, "verify-mac", {"message": b64(b"payload"), "mac": tag})
    assert ok.json() == {"valid": True, "key_version": 1}
    bad = post(client, key, "verify-mac", {"message": b64(b"payload!"), "mac": tag})
    assert bad.json() == {"valid": False, "key_version": 1}
    assert_error(post(client, key, "verify-mac", {"message": b64(b"payload"), "mac": ""}), 400, "invalid")
    assert_error(post(client, key, "encrypt", {"plaintext": b64(b"x")}), 409, "use_denied")  # a MAC key never encrypts


def test_caps_are_enforced_by_the_service_too() -> None:
    with pytest.raises(key_use.ApplicationError):
        key_use.encrypt(key_id="00000000-0000-4000-8000-000000000000", client=None, plaintext=b"x" * 65537)


def test_a_lenient_policy_key_made_through_the_api_can_be_used_at_once(cast: SimpleNamespace, clock: Any) -> None:
    lenient_policy()
    client = api_client(cast.alice)
    with on_commit():
        response = client.post(
            f"{API}/keys/",
            {
                "name": "lab-key",
                "algorithm": "AES-128",
                "usage": "encrypt_decrypt",
                "policy": "lenient",
                "justification": "lab",
            },
            format="json",
        )
    assert response.status_code == 201
    key = Key.objects.get(name="lab-key")
    assert key.state == KeyState.ACTIVE
    assert encrypt(client, key, b"x")["key_version"] == 1
