"""The HSM interface the rest of the console codes against, and its one error hierarchy.

A driver hides a cryptographic token behind these calls. Key material never crosses this interface
in the clear: callers get identifiers (CKA_IDs), key check values, public keys and the outputs of
cryptographic operations, never secret or private key bytes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from kms_console.lib.errors import ExternalError


class HsmError(ExternalError):
    """Any HSM failure. `transient` says whether trying again later may succeed.

    Messages are written for people and may be shown in job rows and API errors: they never hold a
    PIN or key bytes, and drivers build them from their own words, not from library texts.
    """

    transient = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if transient is not None:
            self.transient = transient


class HsmTransientError(HsmError):
    """The token was busy, away or lost its session: retrying later may work."""

    transient = True


class HsmConfigError(HsmError):
    """The token cannot be reached as configured (module, label, PIN source): a person must act."""


class HsmAuthError(HsmConfigError):
    """The token refused the PIN (or it is locked). The PIN itself is never part of the message."""


class HsmObjectNotFound(HsmError):
    """No object with that CKA_ID on the token."""


class HsmOperationError(HsmError):
    """The token refused an operation for a permanent reason (mechanism, attribute, key type)."""


class HsmDataError(HsmError):
    """The input does not check out: a ciphertext that fails authentication, a bad wrapped blob."""

    status_code = 400
    code = "invalid_data"


# --- Algorithms -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Algorithm:
    name: str
    family: str  # "aes", "hmac", "rsa" or "ec"
    bits: int
    curve: str | None = None
    security_strength: int = 0

    @property
    def asymmetric(self) -> bool:
        return self.family in {"rsa", "ec"}


ALGORITHMS: dict[str, Algorithm] = {
    alg.name: alg
    for alg in (
        Algorithm("AES-128", "aes", 128, security_strength=128),
        Algorithm("AES-256", "aes", 256, security_strength=256),
        Algorithm("HMAC-SHA256", "hmac", 256, security_strength=256),
        Algorithm("RSA-2048", "rsa", 2048, security_strength=112),
        Algorithm("RSA-3072", "rsa", 3072, security_strength=128),
        Algorithm("RSA-4096", "rsa", 4096, security_strength=152),
        Algorithm("EC-P256", "ec", 256, curve="secp256r1", security_strength=128),
        Algorithm("EC-P384", "ec", 384, curve="secp384r1", security_strength=192),
    )
}


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise HsmOperationError(f"unsupported algorithm {name!r}") from None


# Usages as SPEC §4 fixes them at creation; the driver sets the PKCS#11 capabilities from them.
USAGE_ENCRYPT_DECRYPT = "encrypt_decrypt"
USAGE_SIGN_VERIFY = "sign_verify"
USAGE_WRAP_UNWRAP = "wrap_unwrap"
USAGE_MAC = "mac"


# --- Results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedKey:
    cka_id: bytes
    kcv: str
    public_key_pem: str = ""
    created: bool = True  # False when the object already existed (an idempotent re-run)


@dataclass(frozen=True)
class ObjectInfo:
    cka_id: str  # hex
    object_class: str  # "secret_key", "private_key", "public_key", other
    key_type: str
    label: str
    extractable: bool | None = None
    sensitive: bool | None = None


@dataclass(frozen=True)
class HealthInfo:
    ok: bool
    token_label: str
    module: str
    manufacturer: str = ""
    model: str = ""
    serial: str = ""
    firmware: str = ""
    free_private_memory: int | None = None
    session_count: int | None = None
    mechanisms: list[str] = field(default_factory=list)
    object_count: int = 0
    error: str = ""


class HsmBackend(Protocol):
    """What a driver offers. Every call is safe to make from any thread of any process."""

    token_label: str

    def generate(
        self, algorithm: str, cka_id: bytes, *, usage: str, label: str, extractable: bool = False
    ) -> GeneratedKey: ...

    def lookup(self, cka_id: bytes, algorithm: str) -> GeneratedKey | None: ...

    def exists(self, cka_id: bytes) -> bool: ...

    def destroy(self, cka_id: bytes) -> int: ...

    def key_check_value(self, cka_id: bytes, algorithm: str) -> str: ...

    def public_key_pem(self, cka_id: bytes, algorithm: str = "") -> str: ...

    def encrypt(self, cka_id: bytes, plaintext: bytes, aad: bytes | None = None) -> bytes: ...

    def decrypt(self, cka_id: bytes, blob: bytes, aad: bytes | None = None) -> bytes: ...

    def sign(self, cka_id: bytes, algorithm: str, message: bytes) -> bytes: ...

    def verify(self, cka_id: bytes, algorithm: str, message: bytes, signature: bytes) -> bool: ...

    def mac(self, cka_id: bytes, message: bytes) -> bytes: ...

    def verify_mac(self, cka_id: bytes, message: bytes, tag: bytes) -> bool: ...

    def wrap(self, wrapping_cka_id: bytes, cka_id: bytes) -> bytes: ...

    def unwrap(
        self,
        wrapping_cka_id: bytes,
        blob: bytes,
        *,
        algorithm: str,
        usage: str,
        new_cka_id: bytes,
        label: str,
        extractable: bool = False,
        store: bool = True,
        public_key_pem: str = "",
    ) -> GeneratedKey: ...

    # Restore tests and key pairs: a private key proves its public key by signing a test message.

    def unwrap_check(self, wrapping_cka_id: bytes, blob: bytes, *, algorithm: str, public_key_pem: str = "") -> str: ...

    def prove_key_pair(self, cka_id: bytes, algorithm: str, public_key_pem: str) -> str: ...

    # Key transport: keys held in memory for one call, export to a recipient, import from a sender.

    def transient_key(self, value: bytes) -> AbstractContextManager[bytes]: ...

    def wrap_for_recipient(self, cka_id: bytes, recipient_public_pem: str) -> tuple[bytes, bytes]: ...

    def unwrap_from_sender(
        self,
        import_cka_id: bytes,
        encrypted_transport_key: bytes,
        wrapped_key: bytes,
        *,
        algorithm: str,
        usage: str,
        new_cka_id: bytes,
        label: str,
        extractable: bool = False,
    ) -> GeneratedKey: ...

    def find_ids(self, *, label: str, object_class: str = "private_key") -> list[bytes]: ...

    def inventory(self) -> list[ObjectInfo]: ...

    def health(self) -> HealthInfo: ...
