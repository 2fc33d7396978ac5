"""Splitting the 32-byte recovery key M-of-N with Shamir's scheme, and the text form of a share.

pycryptodome's `Crypto.Protocol.SecretSharing.Shamir` shares 16-byte secrets (GF(2^128)). The
recovery key is an AES-256 key (32 bytes), so it is split as two independent 16-byte halves, each
with its own random polynomial, and custodian i receives the i-th share of both halves. Any M
custodians recombine both halves; fewer than M learn nothing about either half (each half is
information-theoretically hidden on its own, and the polynomials are independent).

A share is handed to its holder as text:  kms-share:<ceremony id>:<index>:<64 hex digits>
Its fingerprint, the only thing the console keeps, is SHA-256 over "<ceremony id>:<index>:" and the
32 share bytes; a share is random-looking 256-bit data, so the fingerprint reveals nothing.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field

from Crypto.Protocol.SecretSharing import Shamir

from kms_console.lib.errors import ApplicationError

RECOVERY_KEY_BYTES = 32
HALF = 16
MAX_SHARES = 10
PREFIX = "kms-share"
_SHARE_RE = re.compile(
    r"^kms-share:(?P<ceremony>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}):(?P<index>[0-9]{1,2}):(?P<value>[0-9a-f]{64})$"
)


class ShareInvalid(ApplicationError):
    code = "share_invalid"


@dataclass(frozen=True)
class Share:
    ceremony_id: uuid.UUID
    index: int
    value: bytes = field(repr=False)  # 32 bytes: the index-th share of each half; never in a repr or log

    @property
    def text(self) -> str:
        return f"{PREFIX}:{self.ceremony_id}:{self.index}:{self.value.hex()}"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.ceremony_id, self.index, self.value)


def fingerprint(ceremony_id: uuid.UUID, index: int, value: bytes) -> str:
    return hashlib.sha256(f"{ceremony_id}:{index}:".encode() + value).hexdigest()


def recovery_fingerprint(recovery_key: bytes) -> str:
    return hashlib.sha256(b"kms-recovery-key:" + recovery_key).hexdigest()


def split(recovery_key: bytes, threshold: int, count: int, ceremony_id: uuid.UUID) -> list[Share]:
    """N shares of the recovery key, any `threshold` of which recombine it."""
    if len(recovery_key) != RECOVERY_KEY_BYTES:
        raise ValueError("the recovery key must be 32 bytes")
    if not 2 <= threshold <= count <= MAX_SHARES:
        raise ValueError("need 2 <= threshold <= count <= 10")
    low = Shamir.split(threshold, count, recovery_key[:HALF])
    high = Shamir.split(threshold, count, recovery_key[HALF:])
    return [
        Share(ceremony_id=ceremony_id, index=i, value=a + b) for (i, a), (j, b) in zip(low, high, strict=True) if i == j
    ]


def combine(shares: list[Share]) -> bytes:
    """The recovery key from `threshold` distinct shares (the caller checks its fingerprint)."""
    low = Shamir.combine([(s.index, s.value[:HALF]) for s in shares])
    high = Shamir.combine([(s.index, s.value[HALF:]) for s in shares])
    return low + high


def parse(text: str) -> Share:
    """Read a share as a custodian typed or pasted it (spaces and line breaks are ignored)."""
    if not isinstance(text, str) or len(text) > 400:
        raise ShareInvalid("That is not a share: paste the whole line that starts with kms-share:.")
    compact = "".join(text.split()).lower()
    match = _SHARE_RE.match(compact)
    if match is None:
        raise ShareInvalid("That is not a share: paste the whole line that starts with kms-share:.")
    index = int(match["index"])
    if not 1 <= index <= MAX_SHARES:
        raise ShareInvalid("That share's number is out of range.")
    return Share(ceremony_id=uuid.UUID(match["ceremony"]), index=index, value=bytes.fromhex(match["value"]))
