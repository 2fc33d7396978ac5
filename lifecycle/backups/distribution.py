"""Distribution: export of a version wrapped for a recipient's RSA key, and the HSM's import key.

An export is dual-controlled and allowed only where the policy says the key is exportable; the HSM
wraps the version under a fresh transport key that RSA-OAEP (SHA-256) encrypts for the recipient
(the driver's `wrap_for_recipient`). An import (bring your own key) arrives the same way, wrapped for
the HSM's import key (`import_key_info` tells the sender how); the job unwraps it inside the HSM.
The import key is made by `manage.py kms_setup` (`ensure_import_keys`); reading it makes nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.db import transaction
from django.utils import timezone

from audit.services import record
from kms_console.lib.errors import ApplicationError, Conflict, Forbidden, NotFound

from ..hsm import HsmError, get_algorithm
from ..models import Export, Hsm, Job, Key, KeyVersion
from ..states import KeyState
from . import hsm_ops
from .escrow import is_kek

MIN_RECIPIENT_BITS = 2048


# --- Export ---------------------------------------------------------------------------------------


def load_recipient_key(pem: Any) -> tuple[str, str]:
    """Validate a recipient's RSA public key (PEM, >= 2048 bits). Returns (normalised PEM, SHA-256 of its DER)."""
    if not isinstance(pem, str) or not pem.strip() or len(pem) > 10_000:
        raise ApplicationError(
            "recipient_public_key: must be an RSA public key in PEM form",
            code="invalid",
            details={"recipient_public_key": ["Required."]},
        )
    try:
        public = serialization.load_pem_public_key(pem.strip().encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # UnsupportedAlgorithm: a well-formed key of a type or curve this library does not know.
        raise ApplicationError(
            "recipient_public_key: is not a PEM public key",
            code="invalid",
            details={"recipient_public_key": ["Not a PEM public key."]},
        ) from None
    if not isinstance(public, rsa.RSAPublicKey) or public.key_size < MIN_RECIPIENT_BITS:
        raise ApplicationError(
            f"recipient_public_key: must be an RSA key of at least {MIN_RECIPIENT_BITS} bits",
            code="invalid",
            details={"recipient_public_key": ["RSA, 2048 bits or more."]},
        )
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    normalised = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return normalised, hashlib.sha256(der).hexdigest()


def check_export(key: Key, version: KeyVersion) -> None:
    policy = key.policy.current
    if not policy.exportable:
        raise Conflict(f"Policy {policy.ref} does not allow wrapped export of its keys.", code="export_not_allowed")
    if get_algorithm(key.algorithm).asymmetric:
        raise Conflict(
            f"{key.name} is a private signature key; it is never distributed (only its public key is).",
            code="export_not_allowed",
        )
    if is_kek(key):
        raise Conflict(f"{key.name} is the backup KEK; it is never exported.", code="export_not_allowed")
    if version.state not in (KeyState.ACTIVE, KeyState.DEACTIVATED) or version.generated_at is None:
        raise Conflict(f"Version {version.number} of {key.name} is {version.state}.", code="state_conflict")
    if not version.extractable:
        raise Conflict(f"Version {version.number} of {key.name} is not extractable.", code="export_not_allowed")


def record_export(job: Job, result: dict[str, Any]) -> Export:
    export_id = job.params["export_id"]
    existing = Export.objects.filter(pk=export_id).first()
    if existing is not None:
        return existing
    p = job.request.parameters
    export = Export.objects.create(
        id=export_id,
        version=job.version,
        recipient=p["recipient"],
        recipient_fingerprint=p["recipient_fingerprint"],
        recipient_public_key_pem=p["recipient_public_key"],
        encrypted_transport_key=result["encrypted_transport_key"],
        wrapped_key=result["wrapped_key"],
        kcv=job.version.kcv,
        created_at=timezone.now(),
        job=job,
        request=job.request,
    )
    record(
        "key.exported",
        target_type="key",
        target_id=job.key_id,
        details={
            "export": str(export.pk),
            "key": job.key.name,
            "version": job.version.number,
            "kcv": export.kcv,
            "recipient": export.recipient,
            "recipient_fingerprint": export.recipient_fingerprint,
            "request": str(job.request_id),
        },
    )
    return export


def export_for_download(*, export_id: Any, user: Any) -> Export:
    """The export's blobs for its requester (recorded as a download)."""
    with transaction.atomic():
        export = (
            Export.objects.select_for_update().select_related("request", "version__key").filter(pk=export_id).first()
        )
        if export is None:
            raise NotFound("No such export.")
        if export.request.requester_id != user.pk:
            raise Forbidden("Only the person who requested the export downloads it.", code="not_requester")
        first = export.downloaded_at is None
        if first:
            export.downloaded_at = timezone.now()
            export.save(update_fields=["downloaded_at"])
        record(
            "key.export_downloaded",
            actor=user,
            target_type="key",
            target_id=export.version.key_id,
            details={"export": str(export.pk), "first": first},
        )
    return export


# --- Import key -----------------------------------------------------------------------------------


def create_import_key(*, hsm: Hsm, actor: Any = None) -> bytes:
    """Make the HSM's import key pair unless it has one (idempotent); the making is audited."""
    cka_id, created = hsm_ops.ensure_import_key(hsm.backend())
    if created:
        with transaction.atomic():
            record(
                "import_key.created",
                actor=actor,
                target_type="hsm",
                target_id=hsm.pk,
                details={"hsm": hsm.name, "cka_id": cka_id.hex(), "fingerprint": _fingerprint(hsm, cka_id)},
            )
    return cka_id


def ensure_import_keys() -> dict[str, str]:
    """`manage.py kms_setup`: every registered HSM in service gets its import key.

    The default HSM must answer (its failure raises); another HSM that cannot be reached now is
    reported and skipped (setup runs again at every start). Returns HSM name -> "ok" or the error.
    """
    outcome = {}
    for hsm in Hsm.objects.filter(retired_at__isnull=True).order_by("-is_default", "name"):
        try:
            create_import_key(hsm=hsm)
        except HsmError as exc:
            if hsm.is_default:
                raise
            outcome[hsm.name] = exc.message
        else:
            outcome[hsm.name] = "ok"
    return outcome


def _public_pem(hsm: Hsm, cka_id: bytes) -> str:
    return hsm.backend().public_key_pem(cka_id, hsm_ops.IMPORT_KEY_ALGORITHM)


def _fingerprint(hsm: Hsm, cka_id: bytes, pem: str | None = None) -> str:
    public = serialization.load_pem_public_key((pem or _public_pem(hsm, cka_id)).encode())
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def import_key_id(hsm: Hsm) -> bytes:
    """The CKA_ID of the HSM's import key; Conflict (409) while setup has not made it."""
    cka_id = hsm_ops.find_import_key(hsm.backend())
    if cka_id is None:
        raise Conflict(
            f"HSM {hsm.name} has no import key yet. An administrator makes it by running "
            "`manage.py kms_setup` (which the run command does at every start).",
            code="no_import_key",
        )
    return cka_id


def import_key_info(*, hsm: Hsm) -> dict[str, Any]:
    """The HSM's import public key and how to wrap for it. A read: it makes nothing (see `create_import_key`)."""
    cka_id = import_key_id(hsm)
    pem = _public_pem(hsm, cka_id)
    return {
        "hsm": hsm.name,
        "algorithm": hsm_ops.IMPORT_KEY_ALGORITHM,
        "public_key_pem": pem,
        "fingerprint": _fingerprint(hsm, cka_id, pem),
        "format": "encrypted_transport_key = RSA-OAEP(SHA-256, MGF1-SHA-256, no label) of a fresh AES-256 "
        "transport key; wrapped_key = AES key wrap (RFC 3394) of the key under the transport key; both base64",
    }
