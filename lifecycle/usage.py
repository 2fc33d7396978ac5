"""The one usage rule: may version V of key K perform operation O now? (SPEC §4)

1. Nothing uses a destroyed key, a key waiting for destruction, or a suspended key.
2. The operation must fit the key's usage (encrypt/decrypt, sign/verify, mac/verify_mac).
3. Protecting (encrypt, sign, mac) needs an active key, its primary version, active, inside its
   originator-usage period.
4. Processing (decrypt, verify, verify_mac) needs an active or deactivated key and version inside
   the version's recipient-usage period; a compromised key processes only inside an approved,
   time-boxed exception.
"""

from __future__ import annotations

import datetime as dt

from .hsm.base import USAGE_ENCRYPT_DECRYPT, USAGE_MAC, USAGE_SIGN_VERIFY
from .models import Key, KeyVersion
from .states import KeyState

PROTECT = frozenset({"encrypt", "sign", "mac"})
PROCESS = frozenset({"decrypt", "verify", "verify_mac"})
OPERATIONS_BY_USAGE = {
    USAGE_ENCRYPT_DECRYPT: frozenset({"encrypt", "decrypt"}),
    USAGE_SIGN_VERIFY: frozenset({"sign", "verify"}),
    USAGE_MAC: frozenset({"mac", "verify_mac"}),
}


def usage_denial(key: Key, version: KeyVersion | None, operation: str, now: dt.datetime) -> str | None:
    """Why the operation is refused, in words; None when it is allowed."""
    if operation not in PROTECT | PROCESS:
        return f"unknown operation {operation!r}"
    if key.state == KeyState.DESTROYED:
        return f"key {key.name} is destroyed"
    if key.destroy_after is not None:
        return f"key {key.name} is scheduled for destruction and may not be used"
    if key.state == KeyState.SUSPENDED:
        return f"key {key.name} is suspended"
    if key.state == KeyState.PRE_ACTIVATION:
        return f"key {key.name} is not active yet (pre-activation)"
    if operation not in OPERATIONS_BY_USAGE.get(key.usage, frozenset()):
        return f"key {key.name} is a {key.usage} key and cannot {operation.replace('_', ' ')}"
    if version is None:
        return f"key {key.name} has no such version"
    if version.state == KeyState.DESTROYED:
        return f"version {version.number} of key {key.name} is destroyed"
    if operation in PROTECT:
        if key.state != KeyState.ACTIVE:
            return f"key {key.name} is {key.state} and can no longer {operation}"
        if key.primary_version_id != version.pk:
            return f"only the primary version of key {key.name} may {operation}"
        if version.state != KeyState.ACTIVE:
            return f"version {version.number} of key {key.name} is {version.state}"
        if version.originator_until is None or now >= version.originator_until:
            return f"version {version.number} of key {key.name} is past its originator-usage period"
        return None
    # Processing protected data.
    if key.state == KeyState.COMPROMISED or version.state == KeyState.COMPROMISED:
        if key.process_exception_until is None or now >= key.process_exception_until:
            return f"key {key.name} is compromised; it may decrypt or verify only under an approved exception"
    elif key.state not in (KeyState.ACTIVE, KeyState.DEACTIVATED) or version.state not in (
        KeyState.ACTIVE,
        KeyState.DEACTIVATED,
    ):
        return f"version {version.number} of key {key.name} is {version.state}"
    if version.recipient_until is None or now >= version.recipient_until:
        return f"version {version.number} of key {key.name} is past its recipient-usage period"
    return None
