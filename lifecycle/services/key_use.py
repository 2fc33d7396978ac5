"""Using keys through the HSM: encrypt, decrypt, sign, verify, mac and verify-mac (the hot path).

Who may use a key (decided here, documented in the API):
1. a service account (role api_client) holding a live `KeyGrant` on the key that names the
   operation (`decrypt`, `verify_mac`, ...) - grants are themselves dual-controlled (`grant`);
2. the key's owner (the key_admin whose request created it) while they still hold key_admin, so
   that an administrator can check a key works; nobody else: not other key_admins, custodians,
   security officers or auditors (separation of duties: managing keys is not using them).

Every call:
1. loads the key by primary key with its primary version and that version's HSM (one query), and
   a version other than the primary by (key, number), the unique index (one more query);
2. checks the caller (grant or ownership), then the one usage rule `lifecycle.usage.usage_denial`
   (state, primary version, cryptoperiods, usage, processing exceptions); a refusal is recorded as
   `key.use_denied` and raised;
3. runs the operation on the HSM through the driver, which caches object handles per process, so
   the token is never searched on this path;
4. counts the use per version, client, operation and day in `KeyUsage` with one UPDATE
   (count = count + 1), inserting the day's row on its first use.
Plaintext, messages and key material never reach the database, the audit trail or error texts.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts import services as accounts
from audit.services import record
from kms_console.lib.errors import ApplicationError, Conflict, Forbidden, NotFound, ServiceUnavailable
from kms_console.lib.roles import Role

from ..hsm.base import HsmDataError, HsmError
from ..models import Key, KeyGrant, KeyUsage, KeyVersion
from ..usage import OPERATIONS_BY_USAGE, usage_denial

# Caps on what a caller may send (decoded bytes): enough for envelope keys, tokens and documents'
# digests; bulk data belongs in envelope encryption, not in one HSM call.
MAX_DATA_BYTES = 64 * 1024
MAX_AAD_BYTES = 8 * 1024
MAX_SIGNATURE_BYTES = 1024

CIPHERTEXT_PREFIX = "kms:v"
_CIPHERTEXT_RE = re.compile(r"^kms:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]*={0,2})$")


@dataclass(frozen=True)
class UseResult:
    """What a use produced: the version that did it, and either bytes or a verdict."""

    version: int
    output: bytes = b""
    valid: bool | None = None


# --- The ciphertext format ------------------------------------------------------------------------


def format_ciphertext(version: int, blob: bytes) -> str:
    """`kms:v<N>:<base64 of nonce ‖ ciphertext ‖ tag>`: the version travels with the data."""
    return f"{CIPHERTEXT_PREFIX}{version}:{base64.b64encode(blob).decode('ascii')}"


def parse_ciphertext(text: str) -> tuple[int, bytes]:
    """The version number and the raw blob of a ciphertext; ApplicationError when it is not one."""
    match = _CIPHERTEXT_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ApplicationError(
            "The ciphertext is not in the form kms:v<N>:<base64> that encrypt returns.",
            code="invalid_ciphertext",
            details={"ciphertext": ["Not a ciphertext of this service."]},
        )
    try:
        blob = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise ApplicationError(
            "The ciphertext's base64 part does not decode.",
            code="invalid_ciphertext",
            details={"ciphertext": ["Invalid base64."]},
        ) from None
    return int(match.group(1)), blob


# --- Checks ---------------------------------------------------------------------------------------


def _load_key(key_id: Any) -> Key:
    key = Key.objects.select_related("primary_version", "primary_version__hsm").filter(pk=key_id).first()
    if key is None:
        raise NotFound("No such key.")
    return key


def _version(key: Key, number: int | None) -> KeyVersion | None:
    primary = key.primary_version
    if number is None or (primary is not None and primary.number == number):
        return primary
    return KeyVersion.objects.select_related("hsm").filter(key_id=key.pk, number=number).first()


def _deny(key: Key, client: Any, operation: str, version: int | None, reason: str) -> None:
    record(
        "key.use_denied",
        actor=client,
        target_type="key",
        target_id=key.pk,
        details={"key": key.name, "operation": operation, "version": version, "reason": reason},
    )


def caller_denial(key: Key, client: Any, operation: str) -> str | None:
    """Why this caller may not use the key for the operation (None when they may)."""
    roles = accounts.roles_of(client)
    if Role.API_CLIENT in roles:
        operations = (
            KeyGrant.objects.filter(key_id=key.pk, grantee_id=client.pk, revoked_at__isnull=True)
            .values_list("operations", flat=True)
            .first()
        )
        if operations is None:
            return f"{client.get_username()} holds no grant on key {key.name}"
        if operation not in operations:
            if operation not in OPERATIONS_BY_USAGE.get(key.usage, frozenset()):
                # No grant could allow it: the usage rule refuses it and says what the key is for
                # (usage_denial), rather than what the grant lacks.
                return None
            return f"the grant of {client.get_username()} on key {key.name} does not include {operation}"
        return None
    if Role.KEY_ADMIN in roles and key.owner_id == client.pk:
        return None
    return "only service accounts with a grant, and the key's owner, may use a key"


def _authorise(key_id: Any, client: Any, operation: str, number: int | None) -> tuple[Key, KeyVersion]:
    key = _load_key(key_id)
    who = caller_denial(key, client, operation)
    if who is not None:
        _deny(key, client, operation, number, who)
        if who.endswith(f"holds no grant on key {key.name}"):
            # A service account sees only the keys it was granted (reads answer 404 for the
            # others): key use must not confirm that the key exists or name it either.
            raise NotFound("No such key.")
        raise Forbidden(f"You may not {operation.replace('_', ' ')} with key {key.name}: {who}.", code="not_granted")
    version = _version(key, number)
    if version is None:
        reason = f"key {key.name} has no version {number}"
        _deny(key, client, operation, number, reason)
        raise ApplicationError(
            f"Key {key.name} has no version {number}.", code="unknown_version", details={"key_version": [reason]}
        )
    reason = usage_denial(key, version, operation, timezone.now())
    if reason is not None:
        _deny(key, client, operation, version.number, reason)
        raise Conflict(f"Refused: {reason}.", code="use_denied")
    return key, version


def _count(version: KeyVersion, client: Any, operation: str) -> None:
    day = timezone.now().date()
    bucket = KeyUsage.objects.filter(version_id=version.pk, client_id=client.pk, operation=operation, day=day)
    if bucket.update(count=F("count") + 1):
        return
    try:
        with transaction.atomic():
            KeyUsage.objects.create(version=version, client=client, operation=operation, day=day, count=1)
    except IntegrityError:
        # Another request made today's row between our UPDATE and INSERT: count on it.
        bucket.update(count=F("count") + 1)


def _hsm(key: Key, client: Any, operation: str, version: KeyVersion, call: Any) -> Any:
    """Run the HSM step; translate driver errors into answers a client can act on."""
    try:
        return call(version.hsm.backend())
    except HsmDataError as exc:
        record(
            "key.use_failed",
            actor=client,
            target_type="key",
            target_id=key.pk,
            details={"key": key.name, "operation": operation, "version": version.number, "reason": exc.message},
        )
        raise ApplicationError(
            f"The data does not check out under version {version.number} of key {key.name}: {exc.message}.",
            code="invalid_ciphertext",
        ) from None
    except HsmError as exc:
        # Not the client's doing (token away, object missing): a 503 the client may retry.
        raise ServiceUnavailable(
            f"The HSM could not {operation.replace('_', ' ')}: {exc.message}.", code="hsm_error"
        ) from None


def _use(key_id: Any, client: Any, operation: str, number: int | None, call: Any) -> tuple[Any, int]:
    key, version = _authorise(key_id, client, operation, number)
    output = _hsm(key, client, operation, version, call(key, version))
    _count(version, client, operation)
    return output, version.number


# --- The operations -------------------------------------------------------------------------------


def _check_size(name: str, data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise ApplicationError(
            f"{name} is larger than {limit} bytes.", code="too_large", details={name: [f"At most {limit} bytes."]}
        )


def encrypt(*, key_id: Any, client: Any, plaintext: bytes, aad: bytes | None = None) -> UseResult:
    """AES-GCM under the primary version with a fresh 96-bit nonce; the output names the version."""
    _check_size("plaintext", plaintext, MAX_DATA_BYTES)
    _check_size("aad", aad or b"", MAX_AAD_BYTES)

    def call(key: Key, version: KeyVersion) -> Any:
        return lambda backend: backend.encrypt(version.cka_id_bytes, plaintext, aad)

    blob, number = _use(key_id, client, "encrypt", None, call)
    return UseResult(version=number, output=blob)


def decrypt(*, key_id: Any, client: Any, ciphertext: str, aad: bytes | None = None) -> UseResult:
    """Decrypt with the version the ciphertext names; tampered data or a wrong AAD is refused (400)."""
    number, blob = parse_ciphertext(ciphertext)
    _check_size("aad", aad or b"", MAX_AAD_BYTES)

    def call(key: Key, version: KeyVersion) -> Any:
        return lambda backend: backend.decrypt(version.cka_id_bytes, blob, aad)

    plaintext, number = _use(key_id, client, "decrypt", number, call)
    return UseResult(version=number, output=plaintext)


def sign(*, key_id: Any, client: Any, message: bytes) -> UseResult:
    """RSA-PSS SHA-256 (salt 32) or ECDSA SHA-256/384 (DER) with the primary version."""
    _check_size("message", message, MAX_DATA_BYTES)

    def call(key: Key, version: KeyVersion) -> Any:
        return lambda backend: backend.sign(version.cka_id_bytes, key.algorithm, message)

    signature, number = _use(key_id, client, "sign", None, call)
    return UseResult(version=number, output=signature)


def verify(*, key_id: Any, client: Any, message: bytes, signature: bytes, version: int | None = None) -> UseResult:
    """Check a signature with the given version (default: the primary)."""
    _check_size("message", message, MAX_DATA_BYTES)
    _check_size("signature", signature, MAX_SIGNATURE_BYTES)

    def call(key: Key, v: KeyVersion) -> Any:
        return lambda backend: backend.verify(v.cka_id_bytes, key.algorithm, message, signature)

    valid, number = _use(key_id, client, "verify", version, call)
    return UseResult(version=number, valid=bool(valid))


def mac(*, key_id: Any, client: Any, message: bytes) -> UseResult:
    """HMAC-SHA256 with the primary version."""
    _check_size("message", message, MAX_DATA_BYTES)

    def call(key: Key, version: KeyVersion) -> Any:
        return lambda backend: backend.mac(version.cka_id_bytes, message)

    tag, number = _use(key_id, client, "mac", None, call)
    return UseResult(version=number, output=tag)


def verify_mac(*, key_id: Any, client: Any, message: bytes, tag: bytes, version: int | None = None) -> UseResult:
    """Check an HMAC-SHA256 tag (constant-time) with the given version (default: the primary)."""
    _check_size("message", message, MAX_DATA_BYTES)
    _check_size("mac", tag, MAX_SIGNATURE_BYTES)

    def call(key: Key, v: KeyVersion) -> Any:
        return lambda backend: backend.verify_mac(v.cka_id_bytes, message, tag)

    valid, number = _use(key_id, client, "verify_mac", version, call)
    return UseResult(version=number, valid=bool(valid))
