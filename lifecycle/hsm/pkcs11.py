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

The driver is one class built in layers, one module each, every layer reaching the token only
through the session layer's `_call` (the lock, the session, the error mapping):

- `session`: the per-process state and lock, fork handling, opening and logging in, `_call`, the
  handle cache (`TokenSession`);
- `keys`: generation, lookup, destruction, key check values, public keys, inventory, health;
- `crypto`: AES-GCM, signatures and MACs (the hot paths);
- `pairs`: the proof that a private key belongs to a recorded public key;
- `wrapping`: key wrap and unwrap, restore tests, export to a recipient, import from a sender.

This module puts them together as `Pkcs11Backend` and keeps every name it always offered.
"""

from __future__ import annotations

from .crypto import GCM_NONCE_BYTES, GCM_TAG_BYTES
from .keys import ZERO_BLOCK
from .pairs import PROOF_MESSAGE_PREFIX
from .session import OPEN_ATTEMPTS, _hsm_lock, _Process, _process, _TokenState
from .wrapping import Wrapping

__all__ = [
    "GCM_NONCE_BYTES",
    "GCM_TAG_BYTES",
    "OPEN_ATTEMPTS",
    "PROOF_MESSAGE_PREFIX",
    "ZERO_BLOCK",
    "Pkcs11Backend",
    "_Process",
    "_TokenState",
    "_hsm_lock",
    "_process",
]


class Pkcs11Backend(Wrapping):
    """One token of one PKCS#11 module, chosen by label; the PIN comes from an env var or a file.

    Every call is safe from any thread of any process (see the module docstring). The methods are
    those of `lifecycle.hsm.base.HsmBackend`, defined by the layers this class is built from.
    """
