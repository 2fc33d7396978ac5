"""Signs audit checkpoints with an EC P-256 key that lives on the default HSM (label kms-audit-signing).

The key is made by `manage.py kms_setup`. Verification uses the public key read from the HSM, never
one stored in the database, so whoever rewrites the database cannot make checkpoints that verify.
"""

from __future__ import annotations

import secrets
import threading

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .hsm import HsmError, HsmObjectNotFound, default_backend

SIGNING_KEY_LABEL = "kms-audit-signing"
ALGORITHM = "EC-P256"

_cache_lock = threading.Lock()
_public_keys: dict[str, ec.EllipticCurvePublicKey] = {}
_signing_id: dict[str, bytes] = {}


def find_signing_key_id() -> bytes | None:
    backend = default_backend()
    with _cache_lock:
        cached = _signing_id.get(backend.token_label)
    if cached:
        return cached
    ids = backend.find_ids(label=SIGNING_KEY_LABEL, object_class="private_key")
    if not ids:
        return None
    with _cache_lock:
        _signing_id[backend.token_label] = ids[0]
    return ids[0]


def ensure_signing_key() -> bytes:
    """Make the audit signing key on the default HSM unless it exists. Returns its CKA_ID."""
    existing = find_signing_key_id()
    if existing:
        return existing
    cka_id = secrets.token_bytes(16)
    default_backend().generate(ALGORITHM, cka_id, usage="sign_verify", label=SIGNING_KEY_LABEL, extractable=False)
    return cka_id


class HsmAuditSigner:
    @property
    def key_id(self) -> str:
        cka_id = find_signing_key_id()
        if cka_id is None:
            raise HsmObjectNotFound("the audit signing key is missing from the HSM; run manage.py kms_setup")
        return cka_id.hex()

    def sign(self, message: bytes) -> bytes:
        return default_backend().sign(bytes.fromhex(self.key_id), ALGORITHM, message)

    def public_key_pem(self, key_id: str | None = None) -> str:
        return default_backend().public_key_pem(bytes.fromhex(key_id or self.key_id), ALGORITHM)

    def _public_key(self, key_id: str) -> ec.EllipticCurvePublicKey | None:
        with _cache_lock:
            cached = _public_keys.get(key_id)
        if cached is not None:
            return cached
        try:
            pem = self.public_key_pem(key_id)
        except (HsmError, ValueError):
            return None
        key = serialization.load_pem_public_key(pem.encode())
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return None
        with _cache_lock:
            _public_keys[key_id] = key
        return key

    def verify(self, message: bytes, signature: bytes, key_id: str) -> bool:
        public = self._public_key(key_id)
        if public is None:
            return False
        try:
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True
