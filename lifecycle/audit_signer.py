"""Signs audit checkpoints with an EC P-256 key that lives on the default HSM (label kms-audit-signing).

The key is made by `manage.py kms_setup` (non-extractable: only the HSM can sign). Verification uses
the public key read from the HSM, never one stored in the database, and accepts only keys that carry
the audit signing label: a checkpoint "signed" with any other key on the token (a customer's EC key
that an API client may use to sign, say) does not verify, so whoever rewrites the database cannot
make checkpoints that do.
"""

from __future__ import annotations

import secrets
import threading

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kms_console.lib.errors import ServiceUnavailable

from .hsm import HsmError, HsmObjectNotFound, default_backend

SIGNING_KEY_LABEL = "kms-audit-signing"
ALGORITHM = "EC-P256"

# Per process and token: the signing key's CKA_ID and the public keys already read. Searching the
# token by label is slow on a full token, so it happens once per process, not per checkpoint.
_cache_lock = threading.Lock()
_public_keys: dict[tuple[str, str], ec.EllipticCurvePublicKey] = {}
_signing_ids: dict[str, tuple[bytes, ...]] = {}


def _trusted_ids() -> tuple[bytes, ...]:
    """CKA_IDs of the private keys labelled as audit signing keys on the default token."""
    backend = default_backend()
    with _cache_lock:
        cached = _signing_ids.get(backend.token_label)
    if cached:
        return cached
    ids = tuple(sorted(backend.find_ids(label=SIGNING_KEY_LABEL, object_class="private_key")))
    if ids:
        with _cache_lock:
            _signing_ids[backend.token_label] = ids
    return ids


def find_signing_key_id() -> bytes | None:
    ids = _trusted_ids()
    return ids[0] if ids else None


def ensure_signing_key() -> bytes:
    """Make the audit signing key on the default HSM unless it exists. Returns its CKA_ID."""
    existing = find_signing_key_id()
    if existing:
        return existing
    cka_id = secrets.token_bytes(16)
    default_backend().generate(ALGORITHM, cka_id, usage="sign_verify", label=SIGNING_KEY_LABEL, extractable=False)
    with _cache_lock:
        _signing_ids.pop(default_backend().token_label, None)
    return cka_id


def forget_cached_keys() -> None:
    """Drop what this process remembers of the token (tests that swap tokens, key ceremonies)."""
    with _cache_lock:
        _signing_ids.clear()
        _public_keys.clear()


class AuditSignerUnavailable(ServiceUnavailable, HsmError):
    """The HSM cannot sign or verify for the audit trail now (or holds no signing key).

    An HsmError to callers on the lifecycle side (the compliance checks catch those), and a 503
    ApplicationError to the audit API and commands, which know nothing of HSMs.
    """


def _unavailable(exc: HsmError) -> AuditSignerUnavailable:
    error = AuditSignerUnavailable(f"The HSM holding the audit signing key cannot be used now: {exc.message}")
    error.transient = exc.transient
    return error


class HsmAuditSigner:
    """`audit.services.get_signer()` builds one of these (settings.KMS_AUDIT_SIGNER)."""

    @property
    def key_id(self) -> str:
        try:
            cka_id = find_signing_key_id()
        except HsmError as exc:
            raise _unavailable(exc) from None
        if cka_id is None:
            raise AuditSignerUnavailable("The audit signing key is missing from the HSM; run manage.py kms_setup.")
        return cka_id.hex()

    def sign(self, message: bytes) -> bytes:
        """An ECDSA P-256 / SHA-256 signature (DER) made inside the HSM."""
        key_id = self.key_id
        try:
            return default_backend().sign(bytes.fromhex(key_id), ALGORITHM, message)
        except HsmError as exc:
            raise _unavailable(exc) from None

    def public_key_pem(self, key_id: str | None = None) -> str:
        key_id = key_id or self.key_id
        try:
            return default_backend().public_key_pem(bytes.fromhex(key_id), ALGORITHM)
        except HsmError as exc:
            raise _unavailable(exc) from None

    def _public_key(self, key_id: str) -> ec.EllipticCurvePublicKey | None:
        """The public half of a trusted audit signing key; None for any other key id."""
        try:
            wanted = bytes.fromhex(key_id)
        except ValueError:
            return None
        token = default_backend().token_label
        with _cache_lock:
            cached = _public_keys.get((token, key_id))
        if cached is not None:
            return cached
        try:
            if wanted not in _trusted_ids():
                return None
            pem = default_backend().public_key_pem(wanted, ALGORITHM)
        except HsmObjectNotFound:
            return None
        except HsmError as exc:
            raise _unavailable(exc) from None
        key = serialization.load_pem_public_key(pem.encode())
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            return None
        with _cache_lock:
            _public_keys[(token, key_id)] = key
        return key

    def verify(self, message: bytes, signature: bytes, key_id: str) -> bool:
        """True only for a valid signature by an audit signing key of this installation's HSM."""
        public = self._public_key(key_id)
        if public is None:
            return False
        try:
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True
