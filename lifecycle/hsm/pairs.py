"""The driver's key-pair layer: which public key a private-key object belongs to.

A private-key object carries no public key, and a public-key object beside it proves nothing about
it. A private key proves its public key by signing a fresh test message inside the HSM; the
signature is verified in software against the public key the console recorded (`prove_key_pair`).
Restores and restore tests use the same proof (`_complete_key_pair`), and a restored private key
gets its public-key object from the recorded PEM when the token lacks it.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import decode_ec_public_key

from .base import Algorithm, GeneratedKey, HsmDataError, HsmOperationError, get_algorithm
from .crypto import Operations
from .session import _TokenState

# A private key proves which public key it belongs to by signing this prefix and fresh random bytes.
PROOF_MESSAGE_PREFIX = b"kms-key-pair-proof:"


class KeyPairs(Operations):
    """Prove that a private key belongs to a public key; complete a pair from its recorded public key."""

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
            template.update(decode_ec_public_key(KeyPairs._spki_der(public), encode_ec_point=True))
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
