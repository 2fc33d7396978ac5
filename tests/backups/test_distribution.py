"""Distribution: export wrapped for a recipient's RSA key, and import (BYOK) under the console's import key."""

from __future__ import annotations

import base64
import secrets
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import cmac, hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap

from approvals.models import RequestState
from approvals.services import open_request
from kms_console.lib.errors import ApplicationError
from lifecycle.backups import hsm_ops
from lifecycle.backups.distribution import export_for_download, load_recipient_key
from lifecycle.hsm import default_backend
from lifecycle.models import Export, Job, JobStatus, Key
from lifecycle.states import KeyState
from tests.conftest import approve
from tests.lifecycle.helpers import generate_key, make_policy, on_commit, run_operation

pytestmark = pytest.mark.django_db

OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def aes_kcv(value: bytes) -> str:
    mac = cmac.CMAC(algorithms.AES(value))
    mac.update(bytes(16))
    return mac.finalize()[:3].hex()


@pytest.fixture(scope="module")
def recipient() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_of(private: rsa.RSAPrivateKey) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture
def exportable(cast: SimpleNamespace, clock: Any) -> Key:
    make_policy("shared-with-partners", exportable=True)
    return generate_key(cast.alice, cast.approvers, clock, name="partner-key", policy="shared-with-partners")


def test_an_exported_blob_unwraps_with_the_recipients_private_key_to_the_same_key(
    cast: SimpleNamespace, clock: Any, exportable: Key, recipient: rsa.RSAPrivateKey
) -> None:
    req = run_operation(
        "export",
        exportable,
        cast.alice,
        cast.approvers,
        clock,
        parameters={"recipient": "Acme Bank", "recipient_public_key": pem_of(recipient)},
    )
    assert req.required_approvals == 2
    export = Export.objects.get(request=req)
    transport = recipient.decrypt(base64.b64decode(export.encrypted_transport_key), OAEP)
    key_value = aes_key_unwrap(transport, base64.b64decode(export.wrapped_key))
    assert len(key_value) == 32
    assert aes_kcv(key_value) == exportable.primary_version.kcv == export.kcv
    # The blobs stay out of the job row; the download is the requester's and is audited.
    assert "wrapped_key" not in Job.objects.get(kind="export").result
    assert export_for_download(export_id=export.pk, user=cast.alice) == export
    with pytest.raises(ApplicationError) as excinfo:
        export_for_download(export_id=export.pk, user=cast.bob)
    assert excinfo.value.code == "not_requester"


def test_export_needs_an_exportable_policy(cast: SimpleNamespace, clock: Any, recipient: rsa.RSAPrivateKey) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, name="k")  # standard policy: not exportable
    with pytest.raises(ApplicationError) as excinfo:
        open_request(
            operation="export",
            requester=cast.alice,
            justification="x",
            target_id=str(key.pk),
            parameters={"recipient": "Acme", "recipient_public_key": pem_of(recipient)},
        )
    assert excinfo.value.code == "export_not_allowed"


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"recipient": "Acme", "recipient_public_key": "not a key"}, "recipient_public_key"),
        ({"recipient": "", "recipient_public_key": "x"}, "recipient"),
        ({"recipient": "Acme"}, "recipient_public_key"),
    ],
)
def test_bad_export_parameters_are_refused(
    cast: SimpleNamespace, clock: Any, exportable: Key, parameters: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApplicationError) as excinfo:
        open_request(
            operation="export",
            requester=cast.alice,
            justification="x",
            target_id=str(exportable.pk),
            parameters=parameters,
        )
    assert field in excinfo.value.details


def test_a_small_or_non_rsa_recipient_key_is_refused(cast: SimpleNamespace, clock: Any, exportable: Key) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    curve = ec.generate_private_key(ec.SECP256R1()).public_key()
    curve_pem = curve.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    for pem in (pem_of(small), curve_pem):
        with pytest.raises(ApplicationError) as excinfo:
            load_recipient_key(pem)
        assert "recipient_public_key" in excinfo.value.details


# --- Import ---------------------------------------------------------------------------------------


def wrap_for_console(value: bytes) -> dict[str, str]:
    """What a client does: RSA-OAEP-SHA256 of a fresh transport key, AES-KW of the key under it."""
    import_id, _ = hsm_ops.ensure_import_key(default_backend())
    public = serialization.load_pem_public_key(default_backend().public_key_pem(import_id).encode())
    transport = secrets.token_bytes(32)
    return {
        "encrypted_transport_key": base64.b64encode(public.encrypt(transport, OAEP)).decode(),
        "wrapped_key": base64.b64encode(aes_key_wrap(transport, value)).decode(),
    }


def test_an_imported_key_lands_in_the_hsm_with_the_stated_check_value(cast: SimpleNamespace, clock: Any) -> None:
    value = secrets.token_bytes(32)
    with on_commit():
        req = open_request(
            operation="import",
            requester=cast.alice,
            justification="partner key exchange",
            parameters={
                "name": "imported",
                "algorithm": "AES-256",
                "usage": "encrypt_decrypt",
                "expected_kcv": aes_kcv(value),
                **wrap_for_console(value),
            },
        )
        assert req.parameters["expected_kcv"] in services_describe(req)
        approve(req, cast.bob, cast.carol, clock=clock)
    req.refresh_from_db()
    assert req.state == RequestState.EXECUTED
    key = Key.objects.get(name="imported")
    assert key.state == KeyState.ACTIVE and key.primary_version.kcv == aes_kcv(value)
    # The key works inside the HSM: a ciphertext made in software with the known value decrypts.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(12)
    blob = nonce + AESGCM(value).encrypt(nonce, b"hello", None)
    assert default_backend().decrypt(key.primary_version.cka_id_bytes, blob) == b"hello"


def services_describe(req: Any) -> str:
    from approvals.registry import get

    return get(req.operation).describe(req)


def test_an_import_whose_check_value_differs_fails_and_leaves_nothing(cast: SimpleNamespace, clock: Any) -> None:
    value = secrets.token_bytes(16)
    with on_commit():
        req = open_request(
            operation="import",
            requester=cast.alice,
            justification="partner key exchange",
            parameters={
                "name": "imported",
                "algorithm": "AES-128",
                "usage": "encrypt_decrypt",
                "expected_kcv": "000000" if aes_kcv(value) != "000000" else "111111",
                **wrap_for_console(value),
            },
        )
        approve(req, cast.bob, cast.carol, clock=clock)
    req.refresh_from_db()
    assert req.state == RequestState.FAILED
    assert "check value" in req.error
    version = Key.objects.get(name="imported").versions.get(number=1)
    assert version.generated_at is None and version.kcv == ""
    assert not default_backend().exists(version.cka_id_bytes)
    assert Job.objects.get(kind="import").status == JobStatus.FAILED


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"expected_kcv": "xyz"}, "expected_kcv"),
        ({"wrapped_key": "!!!"}, "wrapped_key"),
        ({"encrypted_transport_key": ""}, "encrypted_transport_key"),
        ({"algorithm": "EC-P256", "usage": "sign_verify"}, "algorithm"),
    ],
)
def test_bad_import_parameters_are_refused(
    cast: SimpleNamespace, clock: Any, override: dict[str, Any], field: str
) -> None:
    value = secrets.token_bytes(32)
    parameters = {
        "name": "imported",
        "algorithm": "AES-256",
        "usage": "encrypt_decrypt",
        "expected_kcv": aes_kcv(value),
        **wrap_for_console(value),
        **override,
    }
    with pytest.raises(ApplicationError) as excinfo:
        open_request(operation="import", requester=cast.alice, justification="x", parameters=parameters)
    assert field in excinfo.value.details


@pytest.mark.usefixtures("import_key")
def test_garbage_under_the_import_key_fails_cleanly(cast: SimpleNamespace, clock: Any) -> None:
    value = secrets.token_bytes(32)
    parameters = {
        "name": "imported",
        "algorithm": "AES-256",
        "usage": "encrypt_decrypt",
        "expected_kcv": aes_kcv(value),
    }
    parameters.update(wrap_for_console(value))
    forged = bytearray(base64.b64decode(parameters["encrypted_transport_key"]))
    forged[5] ^= 0xFF
    parameters["encrypted_transport_key"] = base64.b64encode(bytes(forged)).decode()
    with on_commit():
        req = open_request(operation="import", requester=cast.alice, justification="x", parameters=parameters)
        approve(req, cast.bob, cast.carol, clock=clock)
    req.refresh_from_db()
    assert req.state == RequestState.FAILED
    assert "does not decrypt under the import key" in req.error
