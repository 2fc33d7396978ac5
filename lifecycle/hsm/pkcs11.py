"""PKCS#11 driver on python-pkcs11 (SoftHSM2 by default).

Process model, from the traps measured in PLATFORM.md:

1. One logged-in session per token per process, opened lazily on first use and kept: closing a
   logged-in session logs out every other session of the process, and a second login raises
   UserAlreadyLoggedIn.
2. Every call into the library runs under one process-wide re-entrant lock: SoftHSM as
   python-pkcs11 initialises it (C_Initialize without locking callbacks) is not thread-safe.
3. After a fork (Celery prefork, gunicorn) the child finalises and re-initialises the library
   before it opens its own session; the parent's session and handles are never touched again.
4. Object handles are cached per process by (CKA_ID, class), so hot paths (encrypt, sign, mac)
   never search the token; a handle that went stale (the object was destroyed elsewhere) is
   dropped and looked up once more.

The PIN is read from the environment or a file at login time, held only for the login call, and
never put into a message, log record or exception.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import random
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.constants import DEFAULT, MechanismFlag
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import (
    decode_ec_public_key,
    decode_ecdsa_signature,
    encode_ec_public_key,
    encode_ecdsa_signature,
    encode_named_curve_parameters,
)

from .base import (
    USAGE_ENCRYPT_DECRYPT,
    USAGE_MAC,
    USAGE_SIGN_VERIFY,
    USAGE_WRAP_UNWRAP,
    Algorithm,
    GeneratedKey,
    HealthInfo,
    HsmAuthError,
    HsmConfigError,
    HsmDataError,
    HsmError,
    HsmObjectNotFound,
    HsmOperationError,
    HsmTransientError,
    ObjectInfo,
    get_algorithm,
)
from .oaep import oaep_sha256_decode

logger = logging.getLogger(__name__)

T = TypeVar("T")

GCM_NONCE_BYTES = 12
OPEN_ATTEMPTS = 5
GCM_TAG_BYTES = 16
ZERO_BLOCK = bytes(16)
# A private key proves which public key it belongs to by signing this prefix and fresh random bytes.
PROOF_MESSAGE_PREFIX = b"kms-key-pair-proof:"

# Failures that mean "this session (or the library state behind it) is gone": drop it, open a
# new one and try the call once more.
_SESSION_LOST = (
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.UserNotLoggedIn,
    p11e.DeviceRemoved,
    p11e.TokenNotPresent,
)
# A cached handle whose object another process destroyed or replaced.
_HANDLE_STALE = (p11e.ObjectHandleInvalid, p11e.KeyHandleInvalid)
# The token is there but could not do it now.
_TRANSIENT = (p11e.DeviceError, p11e.DeviceMemory, p11e.HostMemory, p11e.SessionCount, p11e.FunctionFailed)
_PIN_REFUSED = (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange, p11e.PinExpired, p11e.PinLocked)
_BAD_CIPHERTEXT = (
    p11e.GeneralError,  # SoftHSM's answer to a GCM tag mismatch
    p11e.EncryptedDataInvalid,
    p11e.EncryptedDataLenRange,
    p11e.DataInvalid,
    p11e.DataLenRange,
)
_BAD_WRAPPED = (*_BAD_CIPHERTEXT, p11e.WrappedKeyInvalid, p11e.WrappedKeyLenRange, p11e.TemplateInconsistent)

_CLASS_NAMES = {
    ObjectClass.SECRET_KEY: "secret_key",
    ObjectClass.PRIVATE_KEY: "private_key",
    ObjectClass.PUBLIC_KEY: "public_key",
    ObjectClass.DATA: "data",
    ObjectClass.CERTIFICATE: "certificate",
}


# --- Per-process state ----------------------------------------------------------------------------


@dataclass
class _TokenState:
    session: Any
    token: Any
    handles: dict[tuple[bytes, ObjectClass], Any] = field(default_factory=dict)


class _Process:
    """Everything that must not cross a fork: the lock, the sessions and the handle caches."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self.tokens: dict[tuple[str, str], _TokenState] = {}
        # Modules initialised before a fork: the child must finalise them before use.
        self.reinit_modules: set[str] = set()
        # Objects inherited from the parent. They are kept referenced on purpose: letting them be
        # garbage-collected would send C_CloseSession for a handle this process never opened.
        self.inherited: list[Any] = []

    def forget_module(self, module: str) -> None:
        for key in [key for key in self.tokens if key[0] == module]:
            self.inherited.append(self.tokens.pop(key))

    def after_fork_in_child(self) -> None:
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self.inherited.extend(self.tokens.values())
        self.tokens = {}
        self.reinit_modules = set(pkcs11._loaded)


_process = _Process()


def _before_fork() -> None:
    _process.lock.acquire()


def _after_fork_in_parent() -> None:
    _process.lock.release()


def _after_fork_in_child() -> None:
    _process.after_fork_in_child()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def _hsm_lock() -> threading.RLock:
    if os.getpid() != _process.pid:  # forked without the hook (should not happen, but be safe)
        _process.after_fork_in_child()
    return _process.lock


# --- The driver -----------------------------------------------------------------------------------


class Pkcs11Backend:
    """One token of one PKCS#11 module, chosen by label; the PIN comes from an env var or a file."""

    def __init__(
        self,
        *,
        module: str,
        token_label: str,
        pin_env: str | None = None,
        pin_file: str | None = None,
        softhsm2_conf: str | None = None,
    ) -> None:
        self.module = module
        self.token_label = token_label
        self.pin_env = pin_env
        self.pin_file = pin_file
        self.softhsm2_conf = softhsm2_conf

    def __repr__(self) -> str:
        return f"<Pkcs11Backend token={self.token_label!r} module={self.module!r}>"

    # -- session management ------------------------------------------------------------------------

    @property
    def _key(self) -> tuple[str, str]:
        return (self.module, self.token_label)

    def _read_pin(self) -> str:
        if self.pin_env and os.environ.get(self.pin_env):
            return os.environ[self.pin_env]
        if self.pin_file:
            path = Path(self.pin_file)
            try:
                pin = path.read_text().strip()
            except OSError:
                raise HsmConfigError(f"cannot read the PIN file for token {self.token_label!r} ({path})") from None
            if pin:
                return pin
        raise HsmConfigError(
            f"no PIN configured for token {self.token_label!r}: set {self.pin_env or 'the PIN variable'} "
            "or the PIN file"
        )

    def _lock_path(self) -> Path:
        """A lock file shared by every process that opens this token on this machine."""
        digest = hashlib.sha256(f"{self.module}\0{self.token_label}".encode()).hexdigest()[:16]
        conf = os.environ.get("SOFTHSM2_CONF") or self.softhsm2_conf
        base = Path(conf).parent if conf and "softhsm" in self.module else Path(tempfile.gettempdir())
        return base / f".kms-pkcs11-{digest}.lock"

    def _open(self) -> _TokenState:
        """Initialise the library (again after a fork), find the token, log in.

        SoftHSM's file store is not safe against several processes initialising and logging in at
        the same instant (measured: NoSuchToken or GeneralError in 1 of ~5 runs of 4 forked
        children), which is what a prefork worker does. Opening is therefore serialised across
        processes with an advisory file lock, and retried a few times from a fresh C_Initialize.
        """
        if self.softhsm2_conf and "softhsm" in self.module:
            # SoftHSM reads its configuration at C_Initialize; every process needs the same one.
            os.environ.setdefault("SOFTHSM2_CONF", self.softhsm2_conf)
        lock_path = self._lock_path()
        try:
            lock_file = open(lock_path, "a")  # noqa: SIM115 - held across the retries below
        except OSError:
            lock_file = None  # no shared directory to lock in: rely on the retries alone
        try:
            if lock_file is not None:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
            for attempt in range(1, OPEN_ATTEMPTS + 1):
                try:
                    return self._open_once(reinitialize=attempt > 1)
                except HsmTransientError:
                    if attempt == OPEN_ATTEMPTS:
                        raise
                    time.sleep(0.05 * attempt + random.random() * 0.05)  # jitter, not a secret
            raise AssertionError("unreachable")
        finally:
            if lock_file is not None:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
                lock_file.close()

    def _open_once(self, *, reinitialize: bool) -> _TokenState:
        try:
            lib = pkcs11.lib(self.module)
        except p11e.PKCS11Error:
            raise HsmConfigError(f"cannot load the PKCS#11 module {self.module}") from None
        try:
            if reinitialize or self.module in _process.reinit_modules:
                _process.reinit_modules.discard(self.module)
                # C_Finalize ends every session of this module in this process, and handle numbers
                # start again afterwards: a kept session or object handle could then name another
                # token's session or key. Forget them all (we hold the process lock).
                _process.forget_module(self.module)
                lib.reinitialize()
            token = lib.get_token(token_label=self.token_label)
        except p11e.NoSuchToken:
            if reinitialize:
                raise HsmConfigError(f"no token labelled {self.token_label!r} in {self.module}") from None
            raise HsmTransientError(f"token {self.token_label!r} was not listed; trying again") from None
        except p11e.MultipleTokensReturned:
            raise HsmConfigError(f"several tokens are labelled {self.token_label!r}") from None
        except p11e.PKCS11Error as exc:
            raise HsmTransientError(f"could not initialise the PKCS#11 module ({type(exc).__name__})") from None
        pin = self._read_pin()
        try:
            try:
                session = token.open(rw=True, user_pin=pin)
            except p11e.UserAlreadyLoggedIn:
                # Another backend object of this process logged in to the same token already:
                # login state is per process, so a plain session is logged in too.
                session = token.open(rw=True)
        except _PIN_REFUSED as exc:
            locked = isinstance(exc, p11e.PinLocked)
            raise HsmAuthError(
                f"token {self.token_label!r} refused the PIN" + (" (the PIN is locked)" if locked else "")
            ) from None
        except (*_TRANSIENT, p11e.GeneralError, p11e.SessionHandleInvalid, p11e.TokenNotPresent):
            raise HsmTransientError(f"token {self.token_label!r} could not open a session") from None
        except p11e.PKCS11Error as exc:
            raise HsmOperationError(f"token {self.token_label!r} refused a session ({type(exc).__name__})") from None
        finally:
            del pin
        return _TokenState(session=session, token=token)

    def _state(self) -> _TokenState:
        state = _process.tokens.get(self._key)
        if state is None:
            state = self._open()
            _process.tokens[self._key] = state
        return state

    def _drop_state(self) -> None:
        state = _process.tokens.pop(self._key, None)
        if state is not None:
            _process.inherited.append(state)  # never close: see _Process.inherited

    def _call(self, operation: Callable[[_TokenState], T]) -> T:
        """Run one operation under the process lock, healing a lost session or a stale handle once."""
        with _hsm_lock():
            for attempt in (1, 2):
                state = self._state()
                try:
                    return operation(state)
                except HsmError:
                    raise
                except _SESSION_LOST:
                    self._drop_state()
                    if attempt == 2:
                        raise HsmTransientError(f"lost the session to token {self.token_label!r}") from None
                except _HANDLE_STALE:
                    state.handles.clear()
                    if attempt == 2:
                        raise HsmObjectNotFound("the key object is no longer on the token") from None
                except _TRANSIENT as exc:
                    raise HsmTransientError(
                        f"token {self.token_label!r} is busy or failing ({type(exc).__name__})"
                    ) from None
                except p11e.PKCS11Error as exc:
                    raise HsmOperationError(
                        f"token {self.token_label!r} refused the operation ({type(exc).__name__})"
                    ) from None
            raise AssertionError("unreachable")

    def reset(self) -> None:
        """Forget this process's session and handles (tests, and after re-initialising a token)."""
        with _hsm_lock():
            self._drop_state()

    # -- lookups -----------------------------------------------------------------------------------

    def _find(self, state: _TokenState, cka_id: bytes, object_class: ObjectClass) -> Any:
        cache_key = (cka_id, object_class)
        obj = state.handles.get(cache_key)
        if obj is not None:
            return obj
        found = list(state.session.get_objects({Attribute.ID: cka_id, Attribute.CLASS: object_class}))
        if not found:
            raise HsmObjectNotFound(
                f"no {_CLASS_NAMES.get(object_class, 'object')} with CKA_ID {cka_id.hex()} on token "
                f"{self.token_label!r}"
            )
        if len(found) > 1:
            raise HsmOperationError(f"several objects share CKA_ID {cka_id.hex()} on token {self.token_label!r}")
        state.handles[cache_key] = found[0]
        return found[0]

    @staticmethod
    def _classes_for(alg: Algorithm) -> tuple[ObjectClass, ...]:
        return (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY) if alg.asymmetric else (ObjectClass.SECRET_KEY,)

    def exists(self, cka_id: bytes) -> bool:
        """Search the token itself (no cache): used to confirm destruction."""

        def run(state: _TokenState) -> bool:
            return any(True for _ in state.session.get_objects({Attribute.ID: cka_id}))

        return self._call(run)

    def lookup(self, cka_id: bytes, algorithm: str) -> GeneratedKey | None:
        """The key already made under this CKA_ID, if any (how a re-run task finds its own work)."""
        alg = get_algorithm(algorithm)

        def run(state: _TokenState) -> GeneratedKey | None:
            try:
                for object_class in self._classes_for(alg):
                    self._find(state, cka_id, object_class)
            except HsmObjectNotFound:
                return None
            return GeneratedKey(
                cka_id=cka_id,
                kcv=self._kcv(state, cka_id, alg),
                public_key_pem=self._public_pem(state, cka_id, alg) if alg.asymmetric else "",
                created=False,
            )

        return self._call(run)

    def find_ids(self, *, label: str, object_class: str = "private_key") -> list[bytes]:
        """CKA_IDs of the objects with this label (a token search: for setup paths, not hot paths)."""
        wanted = {
            "private_key": ObjectClass.PRIVATE_KEY,
            "secret_key": ObjectClass.SECRET_KEY,
            "public_key": ObjectClass.PUBLIC_KEY,
        }[object_class]

        def run(state: _TokenState) -> list[bytes]:
            return [
                bytes(obj[Attribute.ID])
                for obj in state.session.get_objects({Attribute.LABEL: label, Attribute.CLASS: wanted})
            ]

        return self._call(run)

    # -- generation --------------------------------------------------------------------------------

    def generate(
        self, algorithm: str, cka_id: bytes, *, usage: str, label: str, extractable: bool = False
    ) -> GeneratedKey:
        """Make a token key (pair) under the caller's CKA_ID; if one exists already, return it."""
        alg = get_algorithm(algorithm)
        if len(cka_id) < 8:
            raise HsmOperationError("a CKA_ID must be at least 8 random bytes")
        existing = self.lookup(cka_id, algorithm)
        if existing is not None:
            return existing

        def run(state: _TokenState) -> GeneratedKey:
            session = state.session
            secret_template = {
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: extractable,
            }
            if alg.family == "aes":
                caps = MechanismFlag.SIGN | MechanismFlag.VERIFY  # SIGN/VERIFY: AES-CMAC for the KCV
                if usage == USAGE_WRAP_UNWRAP:
                    caps |= MechanismFlag.WRAP | MechanismFlag.UNWRAP
                else:
                    caps |= MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT
                session.generate_key(
                    KeyType.AES,
                    alg.bits,
                    id=cka_id,
                    label=label,
                    store=True,
                    capabilities=caps,
                    template=secret_template,
                )
            elif alg.family == "hmac":
                session.generate_key(
                    KeyType.GENERIC_SECRET,
                    alg.bits,
                    id=cka_id,
                    label=label,
                    store=True,
                    capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                    mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                    template=secret_template,
                )
            elif alg.family == "rsa":
                caps = MechanismFlag.SIGN | MechanismFlag.VERIFY
                if usage == USAGE_WRAP_UNWRAP:
                    caps = MechanismFlag.WRAP | MechanismFlag.UNWRAP | MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT
                session.generate_keypair(
                    KeyType.RSA,
                    alg.bits,
                    id=cka_id,
                    label=label,
                    store=True,
                    capabilities=caps,
                    public_template={Attribute.TOKEN: True, Attribute.PRIVATE: False},
                    private_template=secret_template,
                )
            elif alg.family == "ec":
                params = session.create_domain_parameters(
                    KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(alg.curve)}, local=True
                )
                params.generate_keypair(
                    id=cka_id,
                    label=label,
                    store=True,
                    capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                    public_template={Attribute.TOKEN: True, Attribute.PRIVATE: False},
                    private_template=secret_template,
                )
            else:  # pragma: no cover - ALGORITHMS holds only the families above
                raise HsmOperationError(f"unsupported algorithm family {alg.family}")
            return GeneratedKey(
                cka_id=cka_id,
                kcv=self._kcv(state, cka_id, alg),
                public_key_pem=self._public_pem(state, cka_id, alg) if alg.asymmetric else "",
                created=True,
            )

        if usage not in {USAGE_ENCRYPT_DECRYPT, USAGE_SIGN_VERIFY, USAGE_WRAP_UNWRAP, USAGE_MAC}:
            raise HsmOperationError(f"unknown usage {usage!r}")
        return self._call(run)

    # -- destruction -------------------------------------------------------------------------------

    def destroy(self, cka_id: bytes) -> int:
        """Destroy every object carrying this CKA_ID; return how many went. Absent already is fine."""

        def run(state: _TokenState) -> int:
            objects = list(state.session.get_objects({Attribute.ID: cka_id}))
            for obj in objects:
                obj.destroy()
            for cache_key in [k for k in state.handles if k[0] == cka_id]:
                del state.handles[cache_key]
            return len(objects)

        return self._call(run)

    # -- key check values and public keys ----------------------------------------------------------

    def _kcv(self, state: _TokenState, cka_id: bytes, alg: Algorithm) -> str:
        if alg.family == "aes":
            key = self._find(state, cka_id, ObjectClass.SECRET_KEY)
            return key.sign(ZERO_BLOCK, mechanism=Mechanism.AES_CMAC)[:3].hex()
        if alg.family == "hmac":
            key = self._find(state, cka_id, ObjectClass.SECRET_KEY)
            return hashlib.sha256(key.sign(bytes(32), mechanism=Mechanism.SHA256_HMAC)).hexdigest()
        der = self._public_der(state, cka_id, alg)
        return hashlib.sha256(der).hexdigest()

    def key_check_value(self, cka_id: bytes, algorithm: str) -> str:
        alg = get_algorithm(algorithm)
        return self._call(lambda state: self._kcv(state, cka_id, alg))

    def _public_der(self, state: _TokenState, cka_id: bytes, alg: Algorithm) -> bytes:
        pub = self._find(state, cka_id, ObjectClass.PUBLIC_KEY)
        if alg.family == "rsa":
            numbers = rsa.RSAPublicNumbers(
                int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big"), int.from_bytes(pub[Attribute.MODULUS], "big")
            )
            return numbers.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return encode_ec_public_key(pub)

    def _public_pem(self, state: _TokenState, cka_id: bytes, alg: Algorithm) -> str:
        der = self._public_der(state, cka_id, alg)
        key = serialization.load_der_public_key(der)
        return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def public_key_pem(self, cka_id: bytes, algorithm: str = "") -> str:
        def run(state: _TokenState) -> str:
            pub = self._find(state, cka_id, ObjectClass.PUBLIC_KEY)
            family = "rsa" if pub.key_type == KeyType.RSA else "ec"
            alg = get_algorithm(algorithm) if algorithm else Algorithm("?", family, 0)
            return self._public_pem(state, cka_id, alg)

        return self._call(run)

    # -- symmetric encryption (AES-GCM) ------------------------------------------------------------

    def encrypt(self, cka_id: bytes, plaintext: bytes, aad: bytes | None = None) -> bytes:
        """AES-GCM under a fresh random 96-bit nonce: returns nonce ‖ ciphertext ‖ 128-bit tag."""
        nonce = secrets.token_bytes(GCM_NONCE_BYTES)

        def run(state: _TokenState) -> bytes:
            key = self._find(state, cka_id, ObjectClass.SECRET_KEY)
            return nonce + key.encrypt(
                plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad or b"", 128)
            )

        return self._call(run)

    def decrypt(self, cka_id: bytes, blob: bytes, aad: bytes | None = None) -> bytes:
        if len(blob) < GCM_NONCE_BYTES + GCM_TAG_BYTES:
            raise HsmDataError("the ciphertext is too short to be AES-GCM output")
        nonce, body = blob[:GCM_NONCE_BYTES], blob[GCM_NONCE_BYTES:]

        def run(state: _TokenState) -> bytes:
            key = self._find(state, cka_id, ObjectClass.SECRET_KEY)
            try:
                return key.decrypt(body, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad or b"", 128))
            except _BAD_CIPHERTEXT:
                raise HsmDataError(
                    "the ciphertext does not authenticate under this key (tampered data or wrong AAD)"
                ) from None

        return self._call(run)

    # -- signatures --------------------------------------------------------------------------------

    @staticmethod
    def _ec_digest(alg: Algorithm, message: bytes) -> bytes:
        return hashlib.sha384(message).digest() if alg.bits == 384 else hashlib.sha256(message).digest()

    def _sign_with(self, priv: Any, alg: Algorithm, message: bytes) -> bytes:
        """Sign with a private-key object (the caller holds the process lock)."""
        if alg.family == "rsa":
            return priv.sign(
                message,
                mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                mechanism_param=(Mechanism.SHA256, MGF.SHA256, 32),
            )
        if alg.family == "ec":
            # SoftHSM lacks ECDSA_SHA512 (the library default): hash here, sign the digest.
            raw = priv.sign(self._ec_digest(alg, message), mechanism=Mechanism.ECDSA)
            return encode_ecdsa_signature(raw)
        raise HsmOperationError(f"{alg.name} keys do not sign")

    def sign(self, cka_id: bytes, algorithm: str, message: bytes) -> bytes:
        """RSA-PSS with SHA-256 (salt 32), or ECDSA with SHA-256/384 as a DER signature."""
        alg = get_algorithm(algorithm)
        return self._call(
            lambda state: self._sign_with(self._find(state, cka_id, ObjectClass.PRIVATE_KEY), alg, message)
        )

    def verify(self, cka_id: bytes, algorithm: str, message: bytes, signature: bytes) -> bool:
        alg = get_algorithm(algorithm)

        def run(state: _TokenState) -> bool:
            pub = self._find(state, cka_id, ObjectClass.PUBLIC_KEY)
            try:
                if alg.family == "rsa":
                    return bool(
                        pub.verify(
                            message,
                            signature,
                            mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                            mechanism_param=(Mechanism.SHA256, MGF.SHA256, 32),
                        )
                    )
                if alg.family == "ec":
                    try:
                        raw = decode_ecdsa_signature(signature)
                    except Exception:
                        return False  # not DER at all
                    return bool(pub.verify(self._ec_digest(alg, message), raw, mechanism=Mechanism.ECDSA))
            except (p11e.SignatureInvalid, p11e.SignatureLenRange, p11e.DataLenRange, p11e.DataInvalid):
                return False
            raise HsmOperationError(f"{alg.name} keys do not verify signatures")

        return self._call(run)

    # -- MACs --------------------------------------------------------------------------------------

    def mac(self, cka_id: bytes, message: bytes) -> bytes:
        def run(state: _TokenState) -> bytes:
            key = self._find(state, cka_id, ObjectClass.SECRET_KEY)
            return key.sign(message, mechanism=Mechanism.SHA256_HMAC)

        return self._call(run)

    def verify_mac(self, cka_id: bytes, message: bytes, tag: bytes) -> bool:
        return hmac.compare_digest(self.mac(cka_id, message), tag)

    # -- wrapping ----------------------------------------------------------------------------------

    def wrap(self, wrapping_cka_id: bytes, cka_id: bytes) -> bytes:
        """AES key wrap (RFC 3394) of a secret key under an AES KEK; private keys use the padded form."""

        def run(state: _TokenState) -> bytes:
            kek = self._find(state, wrapping_cka_id, ObjectClass.SECRET_KEY)
            try:
                target = self._find(state, cka_id, ObjectClass.SECRET_KEY)
                mechanism = Mechanism.AES_KEY_WRAP
            except HsmObjectNotFound:
                target = self._find(state, cka_id, ObjectClass.PRIVATE_KEY)
                mechanism = Mechanism.AES_KEY_WRAP_PAD
            try:
                return kek.wrap_key(target, mechanism=mechanism)
            except p11e.KeyUnextractable:
                raise HsmOperationError(f"key {cka_id.hex()} is not extractable, so it cannot be wrapped") from None
            except p11e.KeyNotWrappable:
                raise HsmOperationError(f"key {cka_id.hex()} cannot be wrapped by this KEK") from None

        return self._call(run)

    def _unwrap_template(self, alg: Algorithm, usage: str, extractable: bool, store: bool) -> tuple:
        template = {
            Attribute.TOKEN: store,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: extractable,
        }
        if alg.family == "aes":
            caps = MechanismFlag.SIGN | MechanismFlag.VERIFY
            caps |= (
                MechanismFlag.WRAP | MechanismFlag.UNWRAP
                if usage == USAGE_WRAP_UNWRAP
                else MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT
            )
            return ObjectClass.SECRET_KEY, KeyType.AES, caps, Mechanism.AES_KEY_WRAP, template
        if alg.family == "hmac":
            caps = MechanismFlag.SIGN | MechanismFlag.VERIFY
            return ObjectClass.SECRET_KEY, KeyType.GENERIC_SECRET, caps, Mechanism.AES_KEY_WRAP, template
        key_type = KeyType.RSA if alg.family == "rsa" else KeyType.EC
        # python-pkcs11 writes every capability attribute into an unwrap template; a private key has
        # no CKA_ENCRYPT, CKA_VERIFY or CKA_WRAP, and SoftHSM refuses them (AttributeTypeInvalid).
        template.update({Attribute.ENCRYPT: DEFAULT, Attribute.VERIFY: DEFAULT, Attribute.WRAP: DEFAULT})
        return ObjectClass.PRIVATE_KEY, key_type, MechanismFlag.SIGN, Mechanism.AES_KEY_WRAP_PAD, template

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
    ) -> GeneratedKey:
        """Unwrap a key under an AES KEK into a new object (a token object unless store=False).

        Secret keys: the HSM computes the key check value of the new object.

        Private keys (RSA, EC; the padded key wrap). A private-key object carries no public key, so:
        1. The public key it belongs to is settled: `public_key_pem` when given (what the version
           recorded); otherwise, for RSA, the one rebuilt from the private object's modulus and
           exponent. An EC private key without `public_key_pem` gets no key check value ("").
        2. The new private key signs a fresh test message, verified in software against that public
           key (`prove_key_pair`); an RSA key's modulus and exponent must also be the PEM's.
        3. A token unwrap makes the public-key object under the same CKA_ID when the token lacks it;
           one that is there must hold that same public key.
        The key check value is the SHA-256 of the public key's SubjectPublicKeyInfo DER, as for a
        generated pair. If a check fails, the new private object is destroyed again and HsmDataError
        raised. If the token holds a private key under `new_cka_id` already (a re-run that stopped
        before the public half was made), it is checked and completed instead of unwrapped twice
        (created=False).
        """
        alg = get_algorithm(algorithm)
        expected = self._expected_public(alg, public_key_pem) if public_key_pem else None
        object_class, key_type, caps, mechanism, template = self._unwrap_template(alg, usage, extractable, store)

        def run(state: _TokenState) -> GeneratedKey:
            if alg.asymmetric and store:
                earlier = self._find_or_none(state, new_cka_id, ObjectClass.PRIVATE_KEY)
                if earlier is not None:
                    return self._complete_key_pair(
                        state, earlier, alg, new_cka_id, label=label, expected=expected, store=store, created=False
                    )
            kek = self._find(state, wrapping_cka_id, ObjectClass.SECRET_KEY)
            try:
                obj = kek.unwrap_key(
                    object_class,
                    key_type,
                    blob,
                    id=new_cka_id,
                    label=label,
                    store=store,
                    capabilities=caps,
                    mechanism=mechanism,
                    template=template,
                )
            except _BAD_WRAPPED:
                raise HsmDataError("the wrapped key does not unwrap under this KEK") from None
            state.handles[(new_cka_id, object_class)] = obj
            if not alg.asymmetric:
                return GeneratedKey(cka_id=new_cka_id, kcv=self._kcv(state, new_cka_id, alg), created=True)
            try:
                return self._complete_key_pair(
                    state, obj, alg, new_cka_id, label=label, expected=expected, store=store, created=True
                )
            except BaseException:
                # Nothing is left half-restored: the private key that did not check out goes again.
                state.handles.pop((new_cka_id, ObjectClass.PRIVATE_KEY), None)
                try:
                    obj.destroy()
                except p11e.PKCS11Error:
                    logger.warning("could not destroy an unwrapped private key that failed its check")
                raise

        return self._call(run)

    def unwrap_check(self, wrapping_cka_id: bytes, blob: bytes, *, algorithm: str, public_key_pem: str = "") -> str:
        """Restore test: unwrap into a session object, return its key check value, destroy it.

        For a private key the value is the SHA-256 of the public key it proved to match by signing
        (see `unwrap`): `public_key_pem` (required for EC, whose private object names no public
        key; used when given for RSA, else the public key rebuilt from the modulus). A private key
        that does not match raises HsmDataError.
        """
        alg = get_algorithm(algorithm)
        if alg.family == "ec" and not public_key_pem:
            raise HsmOperationError("a restore test of an EC private key needs the public key it must match")
        temp_id = secrets.token_bytes(16)
        with _hsm_lock():
            try:
                return self.unwrap(
                    wrapping_cka_id,
                    blob,
                    algorithm=algorithm,
                    usage=USAGE_SIGN_VERIFY if alg.asymmetric else USAGE_ENCRYPT_DECRYPT,
                    new_cka_id=temp_id,
                    label="restore-test",
                    store=False,
                    public_key_pem=public_key_pem,
                ).kcv
            finally:
                self._call(lambda state: self._destroy_session_object(state, temp_id))

    def _destroy_session_object(self, state: _TokenState, cka_id: bytes) -> None:
        """Destroy this process's session objects under `cka_id` (cached handles first, else a search)."""
        cached = [k for k in state.handles if k[0] == cka_id]
        objects = [state.handles.pop(k) for k in cached]
        if not objects:
            # The handle cache was cleared meanwhile (a stale handle elsewhere): find the object.
            objects = list(state.session.get_objects({Attribute.ID: cka_id, Attribute.TOKEN: False}))
        for obj in objects:
            try:
                obj.destroy()
            except p11e.PKCS11Error:
                logger.warning("could not destroy a temporary session object")

    # -- key pairs: which public key a private key belongs to ------------------------------------

    def _find_or_none(self, state: _TokenState, cka_id: bytes, object_class: ObjectClass) -> Any:
        try:
            return self._find(state, cka_id, object_class)
        except HsmObjectNotFound:
            return None

    @staticmethod
    def _expected_public(alg: Algorithm, public_key_pem: str) -> Any:
        """Load the public key a private key must match; it must be of the algorithm's family and size."""
        try:
            public = serialization.load_pem_public_key(public_key_pem.encode())
        except (ValueError, TypeError):
            raise HsmDataError("the recorded public key is not a PEM public key") from None
        if alg.family == "rsa" and isinstance(public, rsa.RSAPublicKey) and public.key_size == alg.bits:
            return public
        if alg.family == "ec" and isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == alg.curve:
            return public
        raise HsmDataError(f"the recorded public key is not an {alg.name} public key")

    @staticmethod
    def _spki_der(public: Any) -> bytes:
        return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def _software_verify(self, public: Any, alg: Algorithm, message: bytes, signature: bytes) -> bool:
        """Verify one of this driver's signatures (`_sign_with`) with the `cryptography` library."""
        try:
            if alg.family == "rsa":
                public.verify(
                    signature,
                    message,
                    asym_padding.PSS(mgf=asym_padding.MGF1(hashes.SHA256()), salt_length=32),
                    hashes.SHA256(),
                )
            else:
                public.verify(signature, message, ec.ECDSA(hashes.SHA384() if alg.bits == 384 else hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def _prove(self, priv: Any, alg: Algorithm, public: Any) -> None:
        """The private-key object signs a fresh message that `public` verifies, or HsmDataError."""
        message = PROOF_MESSAGE_PREFIX + secrets.token_bytes(32)
        try:
            signature = self._sign_with(priv, alg, message)
        except (p11e.KeyFunctionNotPermitted, p11e.KeyTypeInconsistent, p11e.MechanismInvalid):
            raise HsmDataError(
                "the private key cannot sign, so it cannot prove which public key it belongs to"
            ) from None
        if not self._software_verify(public, alg, message, signature):
            raise HsmDataError("the private key does not belong to the recorded public key")

    def _complete_key_pair(
        self,
        state: _TokenState,
        priv: Any,
        alg: Algorithm,
        cka_id: bytes,
        *,
        label: str,
        expected: Any,
        store: bool,
        created: bool,
    ) -> GeneratedKey:
        """Steps 1-3 of `unwrap` for a private-key object: settle and prove its public key, complete the pair."""
        public = expected
        exponent = self._attr(priv, Attribute.PUBLIC_EXPONENT) if alg.family == "rsa" else None
        modulus = self._attr(priv, Attribute.MODULUS) if alg.family == "rsa" else None
        if exponent and modulus:  # an HSM may keep them from us; the signature below still decides
            rebuilt = rsa.RSAPublicNumbers(int.from_bytes(exponent, "big"), int.from_bytes(modulus, "big")).public_key()
            if expected is not None and rebuilt.public_numbers() != expected.public_numbers():
                raise HsmDataError("the private key does not belong to the recorded public key")
            public = rebuilt
        if public is None:
            return GeneratedKey(cka_id=cka_id, kcv="", created=created)
        self._prove(priv, alg, public)
        der = self._spki_der(public)
        if store:
            present = self._find_or_none(state, cka_id, ObjectClass.PUBLIC_KEY)
            if present is None:
                made = state.session.create_object(self._public_template(alg, public, cka_id, label))
                state.handles[(cka_id, ObjectClass.PUBLIC_KEY)] = made
            elif self._public_der(state, cka_id, alg) != der:
                raise HsmDataError(f"the token holds another public key under CKA_ID {cka_id.hex()}")
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        return GeneratedKey(cka_id=cka_id, kcv=hashlib.sha256(der).hexdigest(), public_key_pem=pem, created=created)

    @staticmethod
    def _public_template(alg: Algorithm, public: Any, cka_id: bytes, label: str) -> dict[Attribute, Any]:
        """A token public-key object as `generate` makes it for a sign_verify pair (verify only)."""
        template: dict[Attribute, Any] = {
            Attribute.CLASS: ObjectClass.PUBLIC_KEY,
            Attribute.ID: cka_id,
            Attribute.LABEL: label,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.VERIFY: True,
            Attribute.ENCRYPT: False,
            Attribute.WRAP: False,
        }
        if alg.family == "rsa":
            numbers = public.public_numbers()
            template.update(
                {
                    Attribute.KEY_TYPE: KeyType.RSA,
                    Attribute.MODULUS: numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"),
                    Attribute.PUBLIC_EXPONENT: numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big"),
                }
            )
        else:
            # KEY_TYPE, CLASS, EC_PARAMS (named curve) and EC_POINT (DER OCTET STRING) from the SPKI.
            template.update(decode_ec_public_key(Pkcs11Backend._spki_der(public), encode_ec_point=True))
        return template

    def prove_key_pair(self, cka_id: bytes, algorithm: str, public_key_pem: str) -> str:
        """Prove that the token's private key under `cka_id` belongs to `public_key_pem`.

        The private key signs a fresh test message inside the HSM and the signature is verified in
        software against the PEM (so a substituted private key is caught even when the public-key
        object beside it is the right one). Returns the public key's key check value (SHA-256 of its
        SubjectPublicKeyInfo DER); raises HsmDataError when they do not belong together and
        HsmObjectNotFound when there is no private key.
        """
        alg = get_algorithm(algorithm)
        if not alg.asymmetric:
            raise HsmOperationError(f"{alg.name} keys have no key pair")
        public = self._expected_public(alg, public_key_pem)

        def run(state: _TokenState) -> str:
            self._prove(self._find(state, cka_id, ObjectClass.PRIVATE_KEY), alg, public)
            return hashlib.sha256(self._spki_der(public)).hexdigest()

        return self._call(run)

    def wrap_for_recipient(self, cka_id: bytes, recipient_public_pem: str) -> tuple[bytes, bytes]:
        """Export a key for a recipient's RSA key: RSA-OAEP (SHA-256) of a fresh AES-256 transport
        key, and the key wrapped under that transport key inside the HSM (RFC 3394; padded form for
        private keys). Returns (encrypted transport key, wrapped key).

        SoftHSM 2.6 wraps with OAEP only over SHA-1, so the OAEP step is done here with the
        recipient's public key; the transport key lives for this call only, as a non-extractable
        session object, and the exported key never leaves the HSM unwrapped.
        """
        public = serialization.load_pem_public_key(recipient_public_pem.encode())
        if not isinstance(public, rsa.RSAPublicKey) or public.key_size < 2048:
            raise HsmDataError("the recipient key must be an RSA public key of at least 2048 bits")
        transport = secrets.token_bytes(32)
        encrypted_transport = public.encrypt(
            transport, asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
        )

        def run(state: _TokenState) -> bytes:
            try:
                target = self._find(state, cka_id, ObjectClass.SECRET_KEY)
                mechanism = Mechanism.AES_KEY_WRAP
            except HsmObjectNotFound:
                target = self._find(state, cka_id, ObjectClass.PRIVATE_KEY)
                mechanism = Mechanism.AES_KEY_WRAP_PAD
            wrapper = state.session.create_object(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.AES,
                    Attribute.TOKEN: False,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.WRAP: True,
                    Attribute.VALUE: transport,
                }
            )
            try:
                return wrapper.wrap_key(target, mechanism=mechanism)
            except p11e.KeyUnextractable:
                raise HsmOperationError(f"key {cka_id.hex()} is not extractable, so it cannot be exported") from None
            finally:
                wrapper.destroy()

        return encrypted_transport, self._call(run)

    # -- key transport: transient keys and imports ------------------------------------------------

    @contextlib.contextmanager
    def transient_key(self, value: bytes) -> Iterator[bytes]:
        """Load an AES key of this value as a session object for one block; yield its CKA_ID.

        For a key the console holds in memory for one call only: the recovery key of an escrow
        ceremony or a restore, an import's transport key. The object is sensitive, non-extractable,
        may wrap and unwrap, lives in this process's session only (never on the token), and is
        destroyed when the block ends, also when it raises. Its handle is cached like any other, so
        `wrap` and `unwrap` under it do not search the token.
        """
        if len(value) not in (16, 24, 32):
            raise HsmOperationError("a transient AES key must be 16, 24 or 32 bytes")
        cka_id = secrets.token_bytes(16)

        def load(state: _TokenState) -> None:
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

        self._call(load)
        try:
            yield cka_id
        finally:
            self._call(lambda state: self._destroy_session_object(state, cka_id))

    def _raw_rsa_decrypt(self, state: _TokenState, cka_id: bytes, ciphertext: bytes) -> tuple[bytes, int]:
        """RSA without padding (CKM_RSA_X_509) under the private key; returns (EM, modulus length).

        Private to the driver: the OAEP decoding of its output happens in `unwrap_from_sender`, so
        no caller gets a raw RSA decryption oracle.
        """
        private = self._find(state, cka_id, ObjectClass.PRIVATE_KEY)
        modulus_bytes = len(bytes(private[Attribute.MODULUS]))
        if len(ciphertext) != modulus_bytes:
            raise HsmDataError("the encrypted transport key has the wrong length for the import key")
        try:
            em = private.decrypt(ciphertext, mechanism=Mechanism.RSA_X_509)
        except (p11e.DataInvalid, p11e.DataLenRange, p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange):
            raise HsmDataError("the encrypted transport key does not decrypt under the import key") from None
        return bytes(em).rjust(modulus_bytes, b"\x00"), modulus_bytes

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
    ) -> GeneratedKey:
        """Import a secret key sent the way `wrap_for_recipient` sends one, to an RSA import key.

        The sender encrypts a fresh AES transport key with RSA-OAEP (SHA-256, MGF1-SHA-256, empty
        label) under the public half of `import_cka_id`, and wraps the key under the transport key
        (AES key wrap, RFC 3394). SoftHSM 2.6 decrypts OAEP only with SHA-1, so the raw RSA step
        runs in the HSM and the OAEP decoding here; the transport key then lives for this call only,
        as a `transient_key`, and the imported key is unwrapped inside the HSM into a token object.

        Idempotent: when an object with `new_cka_id` exists already it is returned (created=False).
        Every way the blobs can fail to check out raises HsmDataError.
        """
        alg = get_algorithm(algorithm)
        if alg.asymmetric:
            raise HsmOperationError("only secret keys (AES, HMAC) are imported")
        # One lock across look-up and unwrap: two threads of this process never import one CKA_ID twice.
        with _hsm_lock():
            existing = self.lookup(new_cka_id, algorithm)
            if existing is not None:
                return existing
            em, k = self._call(lambda state: self._raw_rsa_decrypt(state, import_cka_id, encrypted_transport_key))
            transport = oaep_sha256_decode(em, k)
            if len(transport) not in (16, 24, 32):
                raise HsmDataError("the transport key must be an AES key of 128, 192 or 256 bits")
            with self.transient_key(transport) as transport_id:
                return self.unwrap(
                    transport_id,
                    wrapped_key,
                    algorithm=algorithm,
                    usage=usage,
                    new_cka_id=new_cka_id,
                    label=label,
                    extractable=extractable,
                    store=True,
                )

    # -- inventory and health ----------------------------------------------------------------------

    @staticmethod
    def _attr(obj: Any, attribute: Attribute) -> Any:
        try:
            return obj[attribute]
        except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
            return None

    def inventory(self) -> list[ObjectInfo]:
        def run(state: _TokenState) -> list[ObjectInfo]:
            rows = []
            for obj in state.session.get_objects():
                object_class = self._attr(obj, Attribute.CLASS)
                key_type = self._attr(obj, Attribute.KEY_TYPE)
                cka_id = self._attr(obj, Attribute.ID) or b""
                rows.append(
                    ObjectInfo(
                        cka_id=bytes(cka_id).hex(),
                        object_class=_CLASS_NAMES.get(object_class, str(object_class)),
                        key_type=key_type.name if isinstance(key_type, KeyType) else str(key_type or ""),
                        label=self._attr(obj, Attribute.LABEL) or "",
                        extractable=self._attr(obj, Attribute.EXTRACTABLE),
                        sensitive=self._attr(obj, Attribute.SENSITIVE),
                    )
                )
            return rows

        return self._call(run)

    def health(self) -> HealthInfo:
        def run(state: _TokenState) -> HealthInfo:
            token = state.token
            mechanisms = sorted(getattr(m, "name", str(m)) for m in token.slot.get_mechanisms())
            count = sum(1 for _ in state.session.get_objects())
            return HealthInfo(
                ok=True,
                token_label=self.token_label,
                module=self.module,
                manufacturer=token.manufacturer_id,
                model=token.model,
                serial=token.serial.decode() if isinstance(token.serial, bytes) else str(token.serial),
                firmware=".".join(str(part) for part in getattr(token, "firmware_version", ()) or ()),
                mechanisms=mechanisms,
                object_count=count,
            )

        try:
            return self._call(run)
        except HsmError as exc:
            return HealthInfo(ok=False, token_label=self.token_label, module=self.module, error=exc.message)
