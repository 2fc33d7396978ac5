"""The driver's wrapping layer: key wrap and unwrap, restore tests, export and import of keys.

Keys leave the HSM only wrapped: under an AES KEK (RFC 3394; the padded form for private keys), or
for a recipient under a fresh transport key that RSA-OAEP (SHA-256) encrypts. Keys the console holds
in memory for one call (a recovery key, a transport key) live as session objects for that call only
(`transient_key`).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Iterator

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.constants import DEFAULT, MechanismFlag

from .base import (
    USAGE_ENCRYPT_DECRYPT,
    USAGE_SIGN_VERIFY,
    USAGE_WRAP_UNWRAP,
    Algorithm,
    GeneratedKey,
    HsmDataError,
    HsmObjectNotFound,
    HsmOperationError,
    get_algorithm,
)
from .crypto import _BAD_CIPHERTEXT
from .oaep import oaep_sha256_decode
from .pairs import KeyPairs
from .session import _hsm_lock, _TokenState

logger = logging.getLogger(__name__)

_BAD_WRAPPED = (*_BAD_CIPHERTEXT, p11e.WrappedKeyInvalid, p11e.WrappedKeyLenRange, p11e.TemplateInconsistent)


class Wrapping(KeyPairs):
    """Wrap and unwrap under KEKs, test-restore into session objects, export to and import from others."""

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

    # -- export to a recipient ---------------------------------------------------------------------

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
