"""The driver's key-object layer: generation, lookup, destruction, key check values, inventory.

Everything here names objects by CKA_ID and answers with identifiers, key check values and public
keys, never key material. Searches of the token (`exists`, `find_ids`, `inventory`, `health`) are
for confirmation, setup and reporting paths; hot paths find objects through the handle cache.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.constants import MechanismFlag
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from .base import (
    USAGE_ENCRYPT_DECRYPT,
    USAGE_MAC,
    USAGE_SIGN_VERIFY,
    USAGE_WRAP_UNWRAP,
    Algorithm,
    GeneratedKey,
    HealthInfo,
    HsmError,
    HsmObjectNotFound,
    HsmOperationError,
    ObjectInfo,
    get_algorithm,
)
from .session import _CLASS_NAMES, TokenSession, _TokenState

ZERO_BLOCK = bytes(16)


class KeyObjects(TokenSession):
    """Make, find, check and destroy key objects; list what the token holds."""

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

    # -- inventory and health ----------------------------------------------------------------------

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
