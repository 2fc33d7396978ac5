"""The driver's operations layer: AES-GCM, signatures and MACs with keys found through the handle cache.

These are the hot paths (SPEC §6): each call finds its object in the per-process handle cache and
never searches the token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from pkcs11 import MGF, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import decode_ecdsa_signature, encode_ecdsa_signature

from .base import Algorithm, HsmDataError, HsmOperationError, get_algorithm
from .keys import KeyObjects
from .session import _TokenState

GCM_NONCE_BYTES = 12
GCM_TAG_BYTES = 16
_BAD_CIPHERTEXT = (
    p11e.GeneralError,  # SoftHSM's answer to a GCM tag mismatch
    p11e.EncryptedDataInvalid,
    p11e.EncryptedDataLenRange,
    p11e.DataInvalid,
    p11e.DataLenRange,
)


class Operations(KeyObjects):
    """Encrypt and decrypt, sign and verify, MAC and verify a MAC."""

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
