"""The driver's per-process session layer: state that must not cross a fork, one lock, one session.

`TokenSession` is the base of `lifecycle.hsm.pkcs11.Pkcs11Backend`. It owns what the process model
in that module's docstring requires: the process-wide lock, the lazily opened logged-in session per
token (re-opened after a fork or a lost session), the PIN read at login only, and the per-process
cache of object handles. Every operation of the layers above runs through `TokenSession._call`,
which takes the lock and turns library exceptions into the console's HsmError hierarchy.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import random
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11e

from .base import (
    HsmAuthError,
    HsmConfigError,
    HsmError,
    HsmObjectNotFound,
    HsmOperationError,
    HsmTransientError,
)

T = TypeVar("T")

OPEN_ATTEMPTS = 5

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
    # PIN sources (env var, file) whose PIN was checked against the login of this process.
    verified_sources: set[tuple[str | None, str | None]] = field(default_factory=set)


class _Process:
    """Everything that must not cross a fork: the lock, the sessions and the handle caches."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self.tokens: dict[tuple[str, str], _TokenState] = {}
        # A salted digest of the PIN each token was logged in with. The login is per process, not
        # per session, so a backend whose PIN source differs must not ride on another's login: its
        # PIN is compared with this digest instead. Never the PIN itself; the salt never leaves.
        self.salt = secrets.token_bytes(32)
        self.logins: dict[tuple[str, str], bytes] = {}
        # Modules initialised before a fork: the child must finalise them before use.
        self.reinit_modules: set[str] = set()
        # Objects inherited from the parent. They are kept referenced on purpose: letting them be
        # garbage-collected would send C_CloseSession for a handle this process never opened.
        self.inherited: list[Any] = []

    def pin_digest(self, pin: str) -> bytes:
        return hmac.new(self.salt, pin.encode(), hashlib.sha256).digest()

    def forget_module(self, module: str) -> None:
        for key in [key for key in self.tokens if key[0] == module]:
            self.inherited.append(self.tokens.pop(key))
        for key in [key for key in self.logins if key[0] == module]:
            del self.logins[key]  # C_Finalize logs every token of the module out

    def after_fork_in_child(self) -> None:
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self.inherited.extend(self.tokens.values())
        self.tokens = {}
        self.logins = {}
        self.salt = secrets.token_bytes(32)
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


# --- The session layer of the driver --------------------------------------------------------------


class TokenSession:
    """One token of one PKCS#11 module, chosen by label; the PIN comes from an env var or a file.

    The session, lock and handle-cache half of the driver; the operations are added by the layers
    in `keys`, `crypto`, `pairs` and `wrapping`, which reach the token only through `_call`.
    """

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
                _process.logins[self._key] = _process.pin_digest(pin)
            except p11e.UserAlreadyLoggedIn:
                # Another backend object of this process logged in to the same token already:
                # login state is per process, so a plain session is logged in too, but only for
                # a backend that knows the same PIN.
                self._check_pin_against_login(pin)
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
        return _TokenState(session=session, token=token, verified_sources={self._pin_source})

    @property
    def _pin_source(self) -> tuple[str | None, str | None]:
        return (self.pin_env, self.pin_file)

    def _check_pin_against_login(self, pin: str) -> None:
        expected = _process.logins.get(self._key)
        if expected is None:
            # Logged in by something this driver did not record (another path to the same library):
            # there is nothing to prove the PIN against, so refuse rather than ride on that login.
            raise HsmAuthError(f"token {self.token_label!r} is logged in by another path; cannot check the PIN")
        if not hmac.compare_digest(expected, _process.pin_digest(pin)):
            raise HsmAuthError(f"token {self.token_label!r} refused the PIN")

    def _state(self) -> _TokenState:
        state = _process.tokens.get(self._key)
        if state is None:
            state = self._open()
            _process.tokens[self._key] = state
        elif self._pin_source not in state.verified_sources:
            # The session was opened by another backend of this process: prove this one's PIN too.
            self._check_pin_against_login(self._read_pin())
            state.verified_sources.add(self._pin_source)
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

    # -- lookups through the handle cache ----------------------------------------------------------

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

    def _find_or_none(self, state: _TokenState, cka_id: bytes, object_class: ObjectClass) -> Any:
        try:
            return self._find(state, cka_id, object_class)
        except HsmObjectNotFound:
            return None

    @staticmethod
    def _attr(obj: Any, attribute: Attribute) -> Any:
        try:
            return obj[attribute]
        except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
            return None
