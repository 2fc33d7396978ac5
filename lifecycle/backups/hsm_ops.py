"""HSM steps of escrow, restore and import, built on the PKCS#11 driver's session, lock and handle cache.

These extend `lifecycle.hsm.pkcs11.Pkcs11Backend` for key transport; they run every library call
through the driver's `_call` (process-wide lock, session healing) and leave key material inside the
HSM except where noted:

- A *transient key* is an AES key of a value the console holds for one call (the recovery key of
  an escrow, or an import's transport key), loaded as a non-extractable session object and
  destroyed when the call ends.
- Import: SoftHSM 2.6 accepts RSA-OAEP only with SHA-1, so the import key's raw RSA operation
  (CKM_RSA_X_509) runs in the HSM and the OAEP(SHA-256) decoding of its output happens here; the
  transport key it yields lives for the call only, and the key material itself is unwrapped inside
  the HSM.
- The *envelope key* of an HSM (label kms-share-envelope, AES-256, non-extractable) seals escrow
  shares that wait for their holder and shares entered for a restore (AES-GCM with an associated
  context that binds each to its ceremony or restore, index and holder). Every sealed value names
  the CKA_ID it was sealed under, so two processes that race to create the key cannot mix them up.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import threading
from collections.abc import Iterator
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from lifecycle.hsm import GeneratedKey, HsmDataError, HsmObjectNotFound, HsmOperationError, Pkcs11Backend
from lifecycle.hsm.base import USAGE_ENCRYPT_DECRYPT, USAGE_WRAP_UNWRAP

ENVELOPE_LABEL = "kms-share-envelope"
IMPORT_KEY_LABEL = "kms-import-key"
IMPORT_KEY_ALGORITHM = "RSA-3072"

_cache_lock = threading.Lock()
_envelopes: dict[tuple[str, str], bytes] = {}
_import_keys: dict[tuple[str, str], bytes] = {}


# --- Transient keys -------------------------------------------------------------------------------


@contextlib.contextmanager
def transient_key(backend: Pkcs11Backend, value: bytes) -> Iterator[bytes]:
    """Load an AES key of this value as a session object; yield its CKA_ID; destroy it afterwards."""
    if len(value) not in (16, 24, 32):
        raise HsmOperationError("a transient AES key must be 16, 24 or 32 bytes")
    cka_id = secrets.token_bytes(16)

    def load(state: Any) -> None:
        obj = state.session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.ID: cka_id,
                Attribute.TOKEN: False,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.WRAP: True,
                Attribute.UNWRAP: True,
                Attribute.VALUE: value,
            }
        )
        state.handles[(cka_id, ObjectClass.SECRET_KEY)] = obj

    backend._call(load)
    try:
        yield cka_id
    finally:
        backend.destroy(cka_id)


def session_unwrap(backend: Pkcs11Backend, wrapping_cka_id: bytes, blob: bytes, *, algorithm: str) -> tuple[bytes, str]:
    """Unwrap a KEK (AES, wrap/unwrap) into a session object. Returns (its CKA_ID, its KCV).

    The caller destroys it (`backend.destroy`) when done.
    """
    temp = secrets.token_bytes(16)
    made = backend.unwrap(
        wrapping_cka_id,
        blob,
        algorithm=algorithm,
        usage=USAGE_WRAP_UNWRAP,
        new_cka_id=temp,
        label="kms-restore-kek",
        store=False,
    )
    return temp, made.kcv


# --- Import (bring your own key) ------------------------------------------------------------------


def _mgf1_sha256(seed: bytes, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def oaep_sha256_decode(em: bytes, k: int) -> bytes:
    """EME-OAEP decoding (RFC 8017 §7.1.2) with SHA-256, MGF1-SHA-256 and an empty label.

    Every failure gives the same error and the checks are combined before deciding, so the one
    message reveals nothing about which check failed.
    """
    h_len = 32
    if len(em) != k or k < 2 * h_len + 2:
        raise HsmDataError("the encrypted transport key does not decrypt under the import key")
    y, masked_seed, masked_db = em[0], em[1 : 1 + h_len], em[1 + h_len :]
    seed = bytes(a ^ b for a, b in zip(masked_seed, _mgf1_sha256(masked_db, h_len), strict=True))
    db = bytes(a ^ b for a, b in zip(masked_db, _mgf1_sha256(seed, k - h_len - 1), strict=True))
    label_hash = hashlib.sha256(b"").digest()
    good = hmac.compare_digest(db[:h_len], label_hash) & (y == 0)
    rest = db[h_len:]
    separator = rest.find(b"\x01")
    good &= separator >= 0 and not any(rest[:separator])
    if not good:
        raise HsmDataError("the encrypted transport key does not decrypt under the import key")
    return rest[separator + 1 :]


def _raw_rsa_decrypt(backend: Pkcs11Backend, cka_id: bytes, ciphertext: bytes) -> tuple[bytes, int]:
    def run(state: Any) -> tuple[bytes, int]:
        private = backend._find(state, cka_id, ObjectClass.PRIVATE_KEY)
        modulus_bytes = len(bytes(private[Attribute.MODULUS]))
        if len(ciphertext) != modulus_bytes:
            raise HsmDataError("the encrypted transport key has the wrong length for the import key")
        try:
            em = private.decrypt(ciphertext, mechanism=Mechanism.RSA_X_509)
        except (p11e.DataInvalid, p11e.DataLenRange, p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange):
            raise HsmDataError("the encrypted transport key does not decrypt under the import key") from None
        return bytes(em).rjust(modulus_bytes, b"\x00"), modulus_bytes

    return backend._call(run)


def unwrap_from_sender(
    backend: Pkcs11Backend,
    import_cka_id: bytes,
    encrypted_transport_key: bytes,
    wrapped_key: bytes,
    *,
    algorithm: str,
    usage: str,
    new_cka_id: bytes,
    label: str,
    extractable: bool,
) -> GeneratedKey:
    """Import key material sent as RSA-OAEP-SHA256(transport key) + AES-KW(transport key, key).

    Idempotent: when an object with `new_cka_id` exists already, it is returned (created=False).
    """
    existing = backend.lookup(new_cka_id, algorithm)
    if existing is not None:
        return existing
    em, k = _raw_rsa_decrypt(backend, import_cka_id, encrypted_transport_key)
    transport = oaep_sha256_decode(em, k)
    if len(transport) not in (16, 24, 32):
        raise HsmDataError("the transport key must be an AES key of 128, 192 or 256 bits")
    with transient_key(backend, transport) as transport_id:
        return backend.unwrap(
            transport_id,
            wrapped_key,
            algorithm=algorithm,
            usage=usage,
            new_cka_id=new_cka_id,
            label=label,
            extractable=extractable,
            store=True,
        )


def _labelled(
    backend: Pkcs11Backend, cache: dict[tuple[str, str], bytes], label: str, object_class: str
) -> bytes | None:
    key = (backend.module, backend.token_label)
    with _cache_lock:
        cached = cache.get(key)
    if cached:
        return cached
    ids = sorted(backend.find_ids(label=label, object_class=object_class))
    if not ids:
        return None
    with _cache_lock:
        cache[key] = ids[0]
    return ids[0]


def ensure_import_key(backend: Pkcs11Backend) -> tuple[bytes, bool]:
    """The import key pair's CKA_ID on this HSM, made on first use. Returns (CKA_ID, created)."""
    existing = _labelled(backend, _import_keys, IMPORT_KEY_LABEL, "private_key")
    if existing:
        return existing, False
    cka_id = secrets.token_bytes(16)
    backend.generate(IMPORT_KEY_ALGORITHM, cka_id, usage=USAGE_WRAP_UNWRAP, label=IMPORT_KEY_LABEL, extractable=False)
    with _cache_lock:
        _import_keys.pop((backend.module, backend.token_label), None)
    return _labelled(backend, _import_keys, IMPORT_KEY_LABEL, "private_key") or cka_id, True


# --- The envelope key -----------------------------------------------------------------------------


def _envelope_id(backend: Pkcs11Backend) -> bytes:
    existing = _labelled(backend, _envelopes, ENVELOPE_LABEL, "secret_key")
    if existing:
        return existing
    cka_id = secrets.token_bytes(16)
    backend.generate("AES-256", cka_id, usage=USAGE_ENCRYPT_DECRYPT, label=ENVELOPE_LABEL, extractable=False)
    with _cache_lock:
        _envelopes.pop((backend.module, backend.token_label), None)
    return _labelled(backend, _envelopes, ENVELOPE_LABEL, "secret_key") or cka_id


def seal(backend: Pkcs11Backend, data: bytes, context: str) -> str:
    """Encrypt `data` under the HSM's envelope key, bound to `context`. Returns '<cka_id hex>:<base64>'."""
    cka_id = _envelope_id(backend)
    blob = backend.encrypt(cka_id, data, context.encode())
    return f"{cka_id.hex()}:{base64.b64encode(blob).decode()}"


def unseal(backend: Pkcs11Backend, sealed: str, context: str) -> bytes:
    """Open a sealed value; a wrong context, another HSM or tampering all fail as HsmDataError."""
    try:
        cka_hex, blob_b64 = sealed.split(":", 1)
        cka_id, blob = bytes.fromhex(cka_hex), base64.b64decode(blob_b64, validate=True)
    except ValueError:
        raise HsmDataError("the sealed value is damaged") from None
    try:
        return backend.decrypt(cka_id, blob, context.encode())
    except HsmObjectNotFound:
        raise HsmDataError("the envelope key that sealed this value is not on this HSM") from None
