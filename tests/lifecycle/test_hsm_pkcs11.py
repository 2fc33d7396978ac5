"""Contract of the PKCS#11 driver against the session's real SoftHSM2 token."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import secrets
import threading
from typing import Any

import pytest
from cryptography.hazmat.primitives import cmac, hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers import algorithms

from lifecycle.hsm import (
    HsmAuthError,
    HsmConfigError,
    HsmDataError,
    HsmObjectNotFound,
    HsmOperationError,
    Pkcs11Backend,
    default_backend,
)

pytestmark = pytest.mark.usefixtures("hsm_token")

ALL = [
    ("AES-128", "encrypt_decrypt"),
    ("AES-256", "encrypt_decrypt"),
    ("AES-256", "wrap_unwrap"),
    ("HMAC-SHA256", "mac"),
    ("RSA-2048", "sign_verify"),
    ("EC-P256", "sign_verify"),
    ("EC-P384", "sign_verify"),
]


def new_id() -> bytes:
    return secrets.token_bytes(16)


@pytest.fixture
def backend() -> Pkcs11Backend:
    return default_backend()


@pytest.mark.parametrize(("algorithm", "usage"), ALL)
def test_it_generates_each_algorithm_as_a_token_object(backend: Pkcs11Backend, algorithm: str, usage: str) -> None:
    cka_id = new_id()
    made = backend.generate(algorithm, cka_id, usage=usage, label="contract")
    assert made.created
    assert made.kcv
    assert backend.exists(cka_id)
    inventory = {row.cka_id: row for row in backend.inventory() if row.cka_id == cka_id.hex()}
    assert inventory, "the new object is listed in the token's inventory"
    for row in backend.inventory():
        if row.cka_id == cka_id.hex() and row.object_class in {"secret_key", "private_key"}:
            assert row.sensitive is True
            assert row.extractable is False  # not asked for: never extractable
    if algorithm.startswith(("RSA", "EC")):
        assert made.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")


@pytest.mark.parametrize(("algorithm", "usage"), ALL)
def test_generate_is_idempotent_per_cka_id(backend: Pkcs11Backend, algorithm: str, usage: str) -> None:
    cka_id = new_id()
    first = backend.generate(algorithm, cka_id, usage=usage, label="idem")
    again = backend.generate(algorithm, cka_id, usage=usage, label="idem")
    # A re-run finds the object it made instead of making a second one.
    assert again.created is False
    assert again.kcv == first.kcv
    assert sum(1 for row in backend.inventory() if row.cka_id == cka_id.hex()) == (
        2 if algorithm[:2] in {"RS", "EC"} else 1
    )


def test_aes_kcv_is_the_cmac_of_a_zero_block(backend: Pkcs11Backend) -> None:
    """Bring a key of known value into the HSM and compare the HSM's KCV with a software AES-CMAC.

    1. Make an extractable KEK in the HSM and export it to an RSA key pair held in software.
    2. Wrap a known AES key in software under that KEK (RFC 3394) and unwrap it into the HSM.
    3. The HSM's key check value must be the first 3 bytes of AES-CMAC(key, 16 zero bytes).
    """
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap

    recipient = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    recipient_pem = (
        recipient.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    kek = new_id()
    backend.generate("AES-256", kek, usage="wrap_unwrap", label="kek", extractable=True)
    encrypted_transport, wrapped_kek = backend.wrap_for_recipient(kek, recipient_pem)
    transport = recipient.decrypt(
        encrypted_transport, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    )
    kek_value = aes_key_unwrap(transport, wrapped_kek)
    assert len(kek_value) == 32
    known = bytes(range(16))
    imported = backend.unwrap(
        kek,
        aes_key_wrap(kek_value, known),
        algorithm="AES-128",
        usage="encrypt_decrypt",
        new_cka_id=new_id(),
        label="known",
    )
    software = cmac.CMAC(algorithms.AES(known))
    software.update(bytes(16))
    assert imported.kcv == software.finalize()[:3].hex()


def test_a_wrapped_key_restores_with_the_same_kcv(backend: Pkcs11Backend) -> None:
    kek, target = new_id(), new_id()
    backend.generate("AES-256", kek, usage="wrap_unwrap", label="kek")
    made = backend.generate("AES-128", target, usage="encrypt_decrypt", label="t", extractable=True)
    wrapped = backend.wrap(kek, target)
    assert len(wrapped) == 16 + 8  # RFC 3394 adds one 64-bit block
    assert backend.unwrap_check(kek, wrapped, algorithm="AES-128") == made.kcv
    assert len(made.kcv) == 6


def test_aes_gcm_round_trip_with_aad(backend: Pkcs11Backend) -> None:
    cka_id = new_id()
    backend.generate("AES-256", cka_id, usage="encrypt_decrypt", label="gcm")
    blob = backend.encrypt(cka_id, b"attack at dawn", b"ctx")
    assert len(blob) == 12 + 14 + 16
    assert backend.decrypt(cka_id, blob, b"ctx") == b"attack at dawn"
    # A fresh nonce every time.
    assert backend.encrypt(cka_id, b"attack at dawn", b"ctx")[:12] != blob[:12]


def test_aes_gcm_refuses_tampered_data_and_wrong_aad(backend: Pkcs11Backend) -> None:
    cka_id = new_id()
    backend.generate("AES-256", cka_id, usage="encrypt_decrypt", label="gcm")
    blob = backend.encrypt(cka_id, b"payload", b"aad")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(HsmDataError):
        backend.decrypt(cka_id, tampered, b"aad")
    with pytest.raises(HsmDataError):
        backend.decrypt(cka_id, blob, b"other")
    with pytest.raises(HsmDataError):
        backend.decrypt(cka_id, b"short", None)


def test_hmac_sign_and_verify(backend: Pkcs11Backend) -> None:
    cka_id = new_id()
    backend.generate("HMAC-SHA256", cka_id, usage="mac", label="mac")
    tag = backend.mac(cka_id, b"message")
    assert len(tag) == 32
    assert backend.verify_mac(cka_id, b"message", tag)
    assert not backend.verify_mac(cka_id, b"messagE", tag)


@pytest.mark.parametrize("algorithm", ["RSA-2048", "EC-P256", "EC-P384"])
def test_signatures_interoperate_with_cryptography(backend: Pkcs11Backend, algorithm: str) -> None:
    cka_id = new_id()
    made = backend.generate(algorithm, cka_id, usage="sign_verify", label="sig")
    signature = backend.sign(cka_id, algorithm, b"hello")
    public = serialization.load_pem_public_key(made.public_key_pem.encode())
    if algorithm.startswith("RSA"):
        public.verify(
            signature, b"hello", padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256()
        )
    else:
        public.verify(signature, b"hello", ec.ECDSA(hashes.SHA384() if algorithm.endswith("384") else hashes.SHA256()))
    assert backend.verify(cka_id, algorithm, b"hello", signature)
    assert not backend.verify(cka_id, algorithm, b"hellO", signature)
    assert not backend.verify(cka_id, algorithm, b"hello", b"\x30\x00garbage")
    assert backend.public_key_pem(cka_id, algorithm) == made.public_key_pem


def test_wrapping_a_non_extractable_key_is_refused(backend: Pkcs11Backend) -> None:
    kek, target = new_id(), new_id()
    backend.generate("AES-256", kek, usage="wrap_unwrap", label="kek")
    backend.generate("AES-256", target, usage="encrypt_decrypt", label="t", extractable=False)
    with pytest.raises(HsmOperationError, match="not extractable"):
        backend.wrap(kek, target)


def test_unwrap_makes_a_working_token_key(backend: Pkcs11Backend) -> None:
    kek, target, restored = new_id(), new_id(), new_id()
    backend.generate("AES-256", kek, usage="wrap_unwrap", label="kek")
    made = backend.generate("AES-256", target, usage="encrypt_decrypt", label="t", extractable=True)
    blob = backend.encrypt(target, b"secret data")
    wrapped = backend.wrap(kek, target)
    got = backend.unwrap(
        kek, wrapped, algorithm="AES-256", usage="encrypt_decrypt", new_cka_id=restored, label="restored"
    )
    assert got.kcv == made.kcv
    assert backend.decrypt(restored, blob) == b"secret data"
    with pytest.raises(HsmDataError):
        backend.unwrap(
            kek, wrapped[:-1] + b"\x00", algorithm="AES-256", usage="encrypt_decrypt", new_cka_id=new_id(), label="bad"
        )


@pytest.mark.parametrize("algorithm", ["RSA-2048", "EC-P256"])
def test_a_wrapped_private_key_unwraps_and_signs_for_the_same_public_key(
    backend: Pkcs11Backend, algorithm: str
) -> None:
    kek, pair, restored = new_id(), new_id(), new_id()
    backend.generate("AES-256", kek, usage="wrap_unwrap", label="kek")
    made = backend.generate(algorithm, pair, usage="sign_verify", label="pair", extractable=True)
    wrapped = backend.wrap(kek, pair)
    backend.unwrap(kek, wrapped, algorithm=algorithm, usage="sign_verify", new_cka_id=restored, label="restored")
    signature = backend.sign(restored, algorithm, b"restored")
    # The restored private key signs for the original public key.
    assert backend.verify(pair, algorithm, b"restored", signature)
    assert made.public_key_pem


def test_destroy_removes_every_object_and_confirms_absence(backend: Pkcs11Backend) -> None:
    cka_id = new_id()
    backend.generate("EC-P256", cka_id, usage="sign_verify", label="gone")
    backend.sign(cka_id, "EC-P256", b"warm the handle cache")
    assert backend.destroy(cka_id) == 2  # both halves of the pair
    assert not backend.exists(cka_id)
    assert backend.destroy(cka_id) == 0
    with pytest.raises(HsmObjectNotFound):
        backend.sign(cka_id, "EC-P256", b"the cached handle is gone too")


def test_unknown_cka_id_is_not_found(backend: Pkcs11Backend) -> None:
    with pytest.raises(HsmObjectNotFound):
        backend.encrypt(new_id(), b"x")
    assert backend.lookup(new_id(), "AES-256") is None


def test_health_reports_token_and_mechanisms(backend: Pkcs11Backend) -> None:
    health = backend.health()
    assert health.ok
    assert health.token_label == "kms-test"
    assert "AES_GCM" in health.mechanisms
    assert health.object_count >= 1


# --- Secrets stay secret --------------------------------------------------------------------------


def test_a_wrong_pin_gives_a_clear_error_without_the_pin(
    hsm_token: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    monkeypatch.setenv("KMS_TEST_WRONG_PIN", wrong)
    caplog.set_level(logging.DEBUG)
    other = Pkcs11Backend(
        module=default_backend().module, token_label=hsm_token.pins_label, pin_env="KMS_TEST_WRONG_PIN"
    )
    with pytest.raises(HsmAuthError) as excinfo:
        other.inventory()
    text = f"{excinfo.value!s} {excinfo.value!r} {excinfo.value.__cause__!r} {excinfo.value.__context__!r}"
    assert wrong not in text
    assert hsm_token.pins_pin not in text
    assert "refused the PIN" in str(excinfo.value)
    assert wrong not in caplog.text
    health = other.health()
    assert not health.ok
    assert wrong not in health.error
    # The right PIN from a file works, and the default token was never disturbed.
    right = hsm_token.dir / "other-pin"
    right.write_text(hsm_token.pins_pin)
    assert (
        Pkcs11Backend(module=default_backend().module, token_label=hsm_token.pins_label, pin_file=str(right))
        .health()
        .ok
    )
    assert default_backend().health().ok


def test_a_missing_pin_source_is_a_config_error(hsm_token: Any) -> None:
    nowhere = Pkcs11Backend(
        module=default_backend().module, token_label=hsm_token.pins_label, pin_env="KMS_NO_SUCH_PIN_VAR"
    )
    nowhere.reset()  # sessions are per process and token: forget one an earlier test may have opened
    with pytest.raises(HsmConfigError, match="no PIN configured"):
        nowhere.inventory()


def test_a_backend_does_not_ride_on_another_backends_login_to_the_same_token(
    hsm_token: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    right = hsm_token.dir / "pins-token-pin"
    right.write_text(hsm_token.pins_pin)
    module = default_backend().module
    knows = Pkcs11Backend(module=module, token_label=hsm_token.pins_label, pin_file=str(right))
    knows.reset()
    assert knows.health().ok  # this process is now logged in to the token
    nowhere = Pkcs11Backend(module=module, token_label=hsm_token.pins_label, pin_env="KMS_NO_SUCH_PIN_VAR")
    with pytest.raises(HsmConfigError, match="no PIN configured"):
        nowhere.inventory()
    monkeypatch.setenv("KMS_TEST_GUESSED_PIN", "guess-" + secrets.token_hex(4))
    guesser = Pkcs11Backend(module=module, token_label=hsm_token.pins_label, pin_env="KMS_TEST_GUESSED_PIN")
    with pytest.raises(HsmAuthError, match="refused the PIN"):
        guesser.inventory()
    # Also after the shared session was dropped while the process stays logged in.
    guesser.reset()
    with pytest.raises(HsmAuthError, match="refused the PIN"):
        guesser.inventory()
    monkeypatch.setenv("KMS_TEST_KNOWN_PIN", hsm_token.pins_pin)
    same_pin = Pkcs11Backend(module=module, token_label=hsm_token.pins_label, pin_env="KMS_TEST_KNOWN_PIN")
    assert same_pin.health().ok
    assert knows.health().ok


def test_a_login_the_driver_did_not_record_is_not_ridden_on(hsm_token: Any) -> None:
    from lifecycle.hsm.session import _process

    right = hsm_token.dir / "pins-token-pin"
    right.write_text(hsm_token.pins_pin)
    module = default_backend().module
    knows = Pkcs11Backend(module=module, token_label=hsm_token.pins_label, pin_file=str(right))
    knows.reset()
    assert knows.health().ok
    # As if the token had been logged in by another path to the library: no digest to check against.
    recorded = _process.logins.pop((module, hsm_token.pins_label))
    try:
        knows.reset()
        with pytest.raises(HsmAuthError, match="logged in by another path"):
            knows.inventory()
    finally:
        _process.logins[(module, hsm_token.pins_label)] = recorded
    knows.reset()
    assert knows.health().ok


def test_a_missing_token_is_a_config_error_and_other_sessions_recover(backend: Pkcs11Backend) -> None:
    aes = new_id()
    backend.generate("AES-256", aes, usage="encrypt_decrypt", label="before-reinit")
    blob = backend.encrypt(aes, b"kept")  # a warm session and a cached handle
    ghost = Pkcs11Backend(module=default_backend().module, token_label="no-such-token", pin_env="KMS_HSM_PIN")
    with pytest.raises(HsmConfigError, match="no token labelled 'no-such-token'"):
        ghost.inventory()
    # Looking again re-initialised the library; the other token's session and handles were renewed,
    # not reused with numbers that may now name something else.
    assert backend.decrypt(aes, blob) == b"kept"
    health = ghost.health()
    assert not health.ok
    assert os.environ["KMS_HSM_PIN"] not in health.error


# --- Threads and forks ----------------------------------------------------------------------------


def test_four_threads_at_once_never_crash(backend: Pkcs11Backend) -> None:
    aes, ec_key = new_id(), new_id()
    backend.generate("AES-256", aes, usage="encrypt_decrypt", label="threads")
    backend.generate("EC-P256", ec_key, usage="sign_verify", label="threads")
    errors: list[BaseException] = []

    def generate_and_destroy() -> None:
        for _ in range(25):
            cka_id = new_id()
            backend.generate("AES-128", cka_id, usage="encrypt_decrypt", label="thread")
            backend.destroy(cka_id)

    def encrypt() -> None:
        for _ in range(150):
            assert backend.decrypt(aes, backend.encrypt(aes, b"x" * 64)) == b"x" * 64

    def sign() -> None:
        for _ in range(150):
            assert backend.verify(ec_key, "EC-P256", b"m", backend.sign(ec_key, "EC-P256", b"m"))

    def run(target: Any) -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in (generate_and_destroy, encrypt, sign, encrypt)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []


def _child(cka_hex: str, queue: Any) -> None:
    try:
        backend = default_backend()
        aes = bytes.fromhex(cka_hex)
        blob = backend.encrypt(aes, b"from the child")
        own = secrets.token_bytes(16)
        backend.generate("AES-256", own, usage="encrypt_decrypt", label="child")
        queue.put(("ok", backend.decrypt(aes, blob), backend.exists(own)))
    except BaseException as exc:
        queue.put(("error", repr(exc), False))


def test_forked_children_use_the_driver_after_the_parent(backend: Pkcs11Backend) -> None:
    aes = new_id()
    backend.generate("AES-256", aes, usage="encrypt_decrypt", label="fork")
    parent_blob = backend.encrypt(aes, b"from the parent")  # the parent's session is warm
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_child, args=(aes.hex(), queue)) for _ in range(4)]
    for child in children:
        child.start()
    results = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=30)
    assert results == [("ok", b"from the child", True)] * 4
    # The parent is unaffected by its children.
    assert backend.decrypt(aes, parent_blob) == b"from the parent"


# --- Private keys: which public key they belong to ------------------------------------------------


def pem_of_pair(backend: Pkcs11Backend, algorithm: str) -> tuple[bytes, Any]:
    """A fresh extractable sign/verify pair; returns (CKA_ID, what generate returned)."""
    cka_id = new_id()
    return cka_id, backend.generate(algorithm, cka_id, usage="sign_verify", label="pair", extractable=True)


def objects_under(backend: Pkcs11Backend, cka_id: bytes) -> list[str]:
    return sorted(row.object_class for row in backend.inventory() if row.cka_id == cka_id.hex())


@pytest.mark.parametrize("algorithm", ["RSA-2048", "EC-P256"])
def test_an_unwrapped_private_key_proves_its_public_key_and_gets_its_public_half(
    backend: Pkcs11Backend, algorithm: str
) -> None:
    kek, restored = new_id(), new_id()
    backend.generate("AES-256", kek, usage="wrap_unwrap", label="kek")
    pair, made = pem_of_pair(backend, algorithm)
    wrapped = backend.wrap(kek, pair)

    got = backend.unwrap(
        kek,
        wrapped,
        algorithm=algorithm,
        usage="sign_verify",
        new_cka_id=restored,
        label="restored",
        extractable=True,
        public_key_pem=made.public_key_pem,
    )

    # The key check value of a pair: SHA-256 of the public key's SubjectPublicKeyInfo DER.
    der = serialization.load_pem_public_key(made.public_key_pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert got.kcv == made.kcv == hashlib.sha256(der).hexdigest()
    assert got.public_key_pem == made.public_key_pem and got.created
    # Both halves are on the token now, so the restored version looks up and verifies like the original.
    assert objects_under(backend, restored) == ["private_key", "public_key"]
    assert backend.lookup(restored, algorithm).kcv == made.kcv
    assert backend.public_key_pem(restored, algorithm) == made.public_key_pem
    signature = backend.sign(restored, algorithm, b"after the restore")
    assert backend.verify(restored, algorithm, b"after the restore", signature)
    assert backend.verify(pair, algorithm, b"after the restore", signature)
    assert backend.prove_key_pair(restored, algorithm, made.public_key_pem) == made.kcv


@pytest.mark.parametrize("algorithm", ["RSA-2048", "EC-P256"])
def test_a_private_key_of_another_pair_is_refused_and_removed(backend: Pkcs11Backend, algorithm: str) -> None:
    kek, restored = new_id(), new_id()
    backend.generate("AES-256", kek, usage="wrap_unwrap", label="kek")
    pair, _ = pem_of_pair(backend, algorithm)
    _, other = pem_of_pair(backend, algorithm)
    wrapped = backend.wrap(kek, pair)

    with pytest.raises(HsmDataError, match="does not belong to the recorded public key"):
        backend.unwrap(
            kek,
            wrapped,
            algorithm=algorithm,
            usage="sign_verify",
            new_cka_id=restored,
            label="restored",
            public_key_pem=other.public_key_pem,
        )
    assert not backend.exists(restored)  # nothing is left half-restored
    with pytest.raises(HsmDataError):
        backend.prove_key_pair(pair, algorithm, other.public_key_pem)
    with pytest.raises(HsmDataError, match="is not an"):
        backend.prove_key_pair(pair, "EC-P384" if algorithm == "EC-P256" else "RSA-3072", other.public_key_pem)
    with pytest.raises(HsmOperationError):
        backend.prove_key_pair(kek, "AES-256", other.public_key_pem)


def test_unwrap_completes_a_half_made_pair_instead_of_unwrapping_twice(backend: Pkcs11Backend) -> None:
    kek, restored = new_id(), new_id()
    backend.generate("AES-256", kek, usage="wrap_unwrap", label="kek")
    pair, made = pem_of_pair(backend, "EC-P256")
    wrapped = backend.wrap(kek, pair)
    # An EC private key names no public key: without the PEM only the private half is made.
    first = backend.unwrap(kek, wrapped, algorithm="EC-P256", usage="sign_verify", new_cka_id=restored, label="r")
    assert first.kcv == "" and objects_under(backend, restored) == ["private_key"]
    assert backend.lookup(restored, "EC-P256") is None  # a half pair is no key yet

    again = backend.unwrap(
        kek,
        wrapped,
        algorithm="EC-P256",
        usage="sign_verify",
        new_cka_id=restored,
        label="r",
        public_key_pem=made.public_key_pem,
    )
    assert again.created is False and again.kcv == made.kcv
    assert objects_under(backend, restored) == ["private_key", "public_key"]


@pytest.mark.parametrize("algorithm", ["RSA-2048", "EC-P256"])
def test_a_restore_test_of_a_private_key_compares_the_public_key_it_proves(
    backend: Pkcs11Backend, algorithm: str
) -> None:
    kek = new_id()
    backend.generate("AES-256", kek, usage="wrap_unwrap", label="kek")
    pair, made = pem_of_pair(backend, algorithm)
    _, other = pem_of_pair(backend, algorithm)
    wrapped = backend.wrap(kek, pair)
    before = len(backend.inventory())

    assert backend.unwrap_check(kek, wrapped, algorithm=algorithm, public_key_pem=made.public_key_pem) == made.kcv
    with pytest.raises(HsmDataError):
        backend.unwrap_check(kek, wrapped, algorithm=algorithm, public_key_pem=other.public_key_pem)
    if algorithm.startswith("RSA"):
        # Without the PEM, RSA's public key is rebuilt from the private object's modulus and exponent.
        assert backend.unwrap_check(kek, wrapped, algorithm=algorithm) == made.kcv
    else:
        with pytest.raises(HsmOperationError, match="needs the public key"):
            backend.unwrap_check(kek, wrapped, algorithm=algorithm)
    assert len(backend.inventory()) == before  # every session object is gone again


# --- Key transport: transient keys, import from a sender ------------------------------------------


def software_kcv(value: bytes) -> str:
    mac = cmac.CMAC(algorithms.AES(value))
    mac.update(bytes(16))
    return mac.finalize()[:3].hex()


def test_a_transient_key_holds_the_given_value_for_its_block_only(backend: Pkcs11Backend) -> None:
    from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

    value = secrets.token_bytes(32)
    target = new_id()
    made = backend.generate("AES-128", target, usage="encrypt_decrypt", label="t", extractable=True)
    with backend.transient_key(value) as transient:
        [row] = [row for row in backend.inventory() if row.cka_id == transient.hex()]
        assert row.sensitive is True and row.extractable is False
        wrapped = backend.wrap(transient, target)
    # The HSM wrapped under exactly the value given: software unwraps it to the same key.
    assert software_kcv(aes_key_unwrap(value, wrapped)) == made.kcv
    assert not backend.exists(transient)
    with pytest.raises(HsmObjectNotFound):
        backend.wrap(transient, target)

    with pytest.raises(RuntimeError), backend.transient_key(value) as failing:
        raise RuntimeError("the caller's step failed")
    assert not backend.exists(failing)  # destroyed also when the block raises
    with pytest.raises(HsmOperationError, match="16, 24 or 32 bytes"), backend.transient_key(b"short"):
        pass


@pytest.fixture(scope="module")
def import_key() -> tuple[bytes, Any]:
    """An RSA import key on the token (wrap_unwrap: it may decrypt) and its public key."""
    cka_id = new_id()
    made = default_backend().generate("RSA-2048", cka_id, usage="wrap_unwrap", label="import")
    return cka_id, serialization.load_pem_public_key(made.public_key_pem.encode())


def sent(public: Any, value: bytes, *, oaep_hash: Any = None) -> tuple[bytes, bytes]:
    """What a sender does: RSA-OAEP of a fresh transport key, AES key wrap of the key under it."""
    from cryptography.hazmat.primitives.keywrap import aes_key_wrap

    transport = secrets.token_bytes(32)
    algorithm = oaep_hash or hashes.SHA256()
    encrypted = public.encrypt(transport, padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=None))
    return encrypted, aes_key_wrap(transport, value)


def test_unwrap_from_sender_imports_a_key_wrapped_for_the_import_key(
    backend: Pkcs11Backend, import_key: tuple[bytes, Any]
) -> None:
    import_id, public = import_key
    value, new = secrets.token_bytes(16), new_id()
    encrypted, wrapped = sent(public, value)

    made = backend.unwrap_from_sender(
        import_id, encrypted, wrapped, algorithm="AES-128", usage="encrypt_decrypt", new_cka_id=new, label="imported"
    )
    assert made.created and made.kcv == software_kcv(value)
    assert objects_under(backend, new) == ["secret_key"]
    # A re-run finds the object it made instead of making a second one.
    again = backend.unwrap_from_sender(
        import_id, encrypted, wrapped, algorithm="AES-128", usage="encrypt_decrypt", new_cka_id=new, label="imported"
    )
    assert again.created is False and again.kcv == made.kcv
    assert objects_under(backend, new) == ["secret_key"]


def test_unwrap_from_sender_refuses_blobs_that_do_not_check_out(
    backend: Pkcs11Backend, import_key: tuple[bytes, Any]
) -> None:
    import_id, public = import_key
    value = secrets.token_bytes(32)
    encrypted, wrapped = sent(public, value)
    _, foreign_wrapped = sent(public, value)  # wrapped under another transport key
    sha1_encrypted, _ = sent(public, value, oaep_hash=hashes.SHA1())
    numbers = public.public_numbers()
    # A valid RSA ciphertext whose plaintext is no OAEP block at all.
    raw = pow(int.from_bytes(secrets.token_bytes(200), "big"), numbers.e, numbers.n).to_bytes(256, "big")
    before = len(backend.inventory())
    for bad_encrypted, bad_wrapped in (
        (encrypted, foreign_wrapped),
        (sha1_encrypted, wrapped),
        (raw, wrapped),
        (encrypted[:-1], wrapped),
    ):
        new = new_id()
        with pytest.raises(HsmDataError):
            backend.unwrap_from_sender(
                import_id,
                bad_encrypted,
                bad_wrapped,
                algorithm="AES-256",
                usage="encrypt_decrypt",
                new_cka_id=new,
                label="bad",
            )
        assert not backend.exists(new)
    assert len(backend.inventory()) == before  # no transport key was left behind either
    with pytest.raises(HsmOperationError, match="only secret keys"):
        backend.unwrap_from_sender(
            import_id, encrypted, wrapped, algorithm="EC-P256", usage="sign_verify", new_cka_id=new_id(), label="x"
        )


def test_key_transport_from_four_threads_at_once_never_crashes(
    backend: Pkcs11Backend, import_key: tuple[bytes, Any]
) -> None:
    import_id, public = import_key
    aes, kek = new_id(), new_id()
    backend.generate("AES-256", aes, usage="encrypt_decrypt", label="threads", extractable=True)
    backend.generate("AES-256", kek, usage="wrap_unwrap", label="threads")
    made = backend.key_check_value(aes, "AES-256")
    errors: list[BaseException] = []

    def imports() -> None:
        for _ in range(10):
            value = secrets.token_bytes(16)
            got = backend.unwrap_from_sender(
                import_id,
                *sent(public, value),
                algorithm="AES-128",
                usage="encrypt_decrypt",
                new_cka_id=new_id(),
                label="t",
            )
            assert got.kcv == software_kcv(value)

    def transients() -> None:
        for _ in range(40):
            with backend.transient_key(secrets.token_bytes(32)) as transient:
                backend.wrap(transient, aes)

    def restore_tests() -> None:
        wrapped = backend.wrap(kek, aes)
        for _ in range(40):
            assert backend.unwrap_check(kek, wrapped, algorithm="AES-256") == made

    def run(target: Any) -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in (imports, transients, restore_tests, transients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
