"""HSM steps of escrow, restore and import that need more than one driver call, on the driver's public API.

Everything here goes through public methods of `lifecycle.hsm.pkcs11.Pkcs11Backend` (which take the
process-wide lock and use the handle cache); the key-transport primitives themselves (transient
keys, the import of a key wrapped for the import key, restore checks of private keys) are driver
methods. Key material stays inside the HSM except where the driver's docstrings say otherwise.

- The *import key* of an HSM (label kms-import-key, RSA-3072, non-extractable) is made by
  `manage.py kms_setup` (`ensure_import_key`), never on a read; senders wrap keys for it
  (`Pkcs11Backend.unwrap_from_sender`), and reads only look it up (`find_import_key`).
- The *envelope key* of an HSM (label kms-share-envelope, AES-256, non-extractable) seals escrow
  shares that wait for their holder and shares entered for a restore (AES-GCM with an associated
  context that binds each to its ceremony or restore, index and holder). Every sealed value names
  the CKA_ID it was sealed under, so two processes that race to create the key cannot mix them up.
"""

from __future__ import annotations

import base64
import secrets
import threading

from lifecycle.hsm import HsmDataError, HsmObjectNotFound, Pkcs11Backend
from lifecycle.hsm.base import USAGE_ENCRYPT_DECRYPT, USAGE_WRAP_UNWRAP

ENVELOPE_LABEL = "kms-share-envelope"
IMPORT_KEY_LABEL = "kms-import-key"
IMPORT_KEY_ALGORITHM = "RSA-3072"
RESTORE_KEK_LABEL = "kms-restore-kek"  # a session object that lives for one restore call

_cache_lock = threading.Lock()
_envelopes: dict[tuple[str, str], bytes] = {}
_import_keys: dict[tuple[str, str], bytes] = {}


# --- Restore --------------------------------------------------------------------------------------


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
        label=RESTORE_KEK_LABEL,
        store=False,
    )
    return temp, made.kcv


# --- The import key ---------------------------------------------------------------------------


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


def find_import_key(backend: Pkcs11Backend) -> bytes | None:
    """The import key pair's CKA_ID on this HSM, or None when it has none yet (nothing is made)."""
    return _labelled(backend, _import_keys, IMPORT_KEY_LABEL, "private_key")


def ensure_import_key(backend: Pkcs11Backend) -> tuple[bytes, bool]:
    """The import key pair's CKA_ID on this HSM, made if missing (setup only). Returns (CKA_ID, created)."""
    existing = find_import_key(backend)
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
