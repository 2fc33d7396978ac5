"""EME-OAEP decoding with SHA-256 (RFC 8017 §7.1.2), for tokens whose RSA-OAEP knows only SHA-1.

SoftHSM 2.6 offers CKM_RSA_PKCS_OAEP with SHA-1 only. To take in a transport key that a sender
encrypted with RSA-OAEP (SHA-256, MGF1-SHA-256, empty label), the driver runs the raw RSA operation
(CKM_RSA_X_509) inside the HSM and decodes its output here, in the worker's memory, for one call.
"""

from __future__ import annotations

import hashlib
import hmac

from .base import HsmDataError

SHA256_BYTES = 32
# One message for every failure: which check failed is never revealed (no padding oracle).
DECODE_ERROR = "the encrypted transport key does not decrypt under the import key"


def mgf1_sha256(seed: bytes, length: int) -> bytes:
    """MGF1 (RFC 8017 §B.2.1) over SHA-256."""
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def oaep_sha256_decode(em: bytes, k: int) -> bytes:
    """The message inside an encoded block `em` of `k` bytes (k: the RSA modulus length in bytes).

    Every failure raises the same HsmDataError, and the checks are combined before deciding, so the
    one message reveals nothing about which check failed.
    """
    if len(em) != k or k < 2 * SHA256_BYTES + 2:
        raise HsmDataError(DECODE_ERROR)
    y, masked_seed, masked_db = em[0], em[1 : 1 + SHA256_BYTES], em[1 + SHA256_BYTES :]
    seed = bytes(a ^ b for a, b in zip(masked_seed, mgf1_sha256(masked_db, SHA256_BYTES), strict=True))
    db = bytes(a ^ b for a, b in zip(masked_db, mgf1_sha256(seed, k - SHA256_BYTES - 1), strict=True))
    label_hash = hashlib.sha256(b"").digest()
    good = hmac.compare_digest(db[:SHA256_BYTES], label_hash) & (y == 0)
    rest = db[SHA256_BYTES:]
    separator = rest.find(b"\x01")
    good &= separator >= 0 and not any(rest[:separator])
    if not good:
        raise HsmDataError(DECODE_ERROR)
    return rest[separator + 1 :]
