"""Prepare an installation: local SoftHSM token (when asked), default HSM, audit signing key, import
keys (bring your own key), policy.

Idempotent: run it on every start. `--init-softhsm` writes ./var/softhsm2.conf, makes the token
`kms-default` with random SO and user PINs in 0600 files under ./var/secrets/ unless it exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from audit.services import record, sign_checkpoint
from kms_console.lib.commands import KmsCommand
from lifecycle.audit_signer import ensure_signing_key
from lifecycle.backups.distribution import ensure_import_keys
from lifecycle.hsm import default_backend, softhsm
from lifecycle.models import Hsm, Policy
from lifecycle.policies import STANDARD_POLICY, standard_settings
from lifecycle.services.policies import policy_apply


class Command(KmsCommand):
    help = "Set up the local HSM token, register the default HSM, the audit signing key and the standard policy."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--init-softhsm", action="store_true", help="create the local SoftHSM2 config and token if missing"
        )

    def run(self, *args: Any, **options: Any) -> None:
        if options["init_softhsm"]:
            self._init_softhsm()
        backend = default_backend()
        health = backend.health()
        if not health.ok:
            raise CommandError(f"The HSM is not reachable: {health.error}")
        self._register_default_hsm()
        cka_id = ensure_signing_key()
        self.stderr.write(f"Audit signing key on token {backend.token_label!r}: CKA_ID {cka_id.hex()}")
        for name, status in ensure_import_keys().items():  # made here, never on a read (BYOK)
            self.stderr.write(f"Import key on HSM {name!r}: {status}")
        if not Policy.objects.filter(name=STANDARD_POLICY).exists():
            with transaction.atomic():
                policy_apply(name=STANDARD_POLICY, settings=standard_settings(), actor=None)
            self.stderr.write("Created the standard policy (version 1).")
        # Anchor what setup recorded right away instead of waiting for beat's first checkpoint.
        checkpoint = sign_checkpoint()
        if checkpoint is not None:
            self.stderr.write(f"Signed an audit checkpoint at #{checkpoint.seq}.")

    def _init_softhsm(self) -> None:
        conf = Path(settings.KMS_SOFTHSM2_CONF)
        token_dir = Path(settings.VAR_DIR) / "softhsm" / "tokens"
        pin_file = Path(settings.KMS_HSM_PIN_FILE)
        if not conf.exists():
            softhsm.write_config(conf, token_dir)
            self.stderr.write(f"Wrote {conf}")
        os.environ["SOFTHSM2_CONF"] = str(conf)
        label = settings.KMS_HSM_TOKEN_LABEL
        if softhsm.token_exists(conf, label):
            return
        so_pin, user_pin = softhsm.new_pin(), softhsm.new_pin()
        softhsm.write_secret(pin_file.parent / "hsm_so_pin", so_pin)
        softhsm.write_secret(pin_file, user_pin)
        softhsm.init_token(conf, label, so_pin, user_pin)
        self.stderr.write(f"Initialised SoftHSM token {label!r}; PINs are in {pin_file.parent} (mode 0600).")

    def _register_default_hsm(self) -> None:
        fields = {
            "module": settings.KMS_PKCS11_MODULE,
            "token_label": settings.KMS_HSM_TOKEN_LABEL,
            "pin_env": settings.KMS_HSM_PIN_ENV,
            "pin_file": settings.KMS_HSM_PIN_FILE,
        }
        with transaction.atomic():
            hsm = Hsm.objects.select_for_update().filter(is_default=True).first()
            if hsm is None:
                hsm = Hsm.objects.create(
                    name="default", is_default=True, registered_at=timezone.now(), location="local", **fields
                )
                record(
                    "hsm.registered",
                    target_type="hsm",
                    target_id=hsm.pk,
                    details={"name": hsm.name, **fields, "bootstrap": True},
                )
                self.stderr.write("Registered the default HSM.")
            elif any(getattr(hsm, name) != value for name, value in fields.items()):
                # The default HSM follows the installation's settings (it is configuration, not data).
                before = {name: getattr(hsm, name) for name in fields}
                for name, value in fields.items():
                    setattr(hsm, name, value)
                hsm.save(update_fields=list(fields))
                record(
                    "hsm.reconfigured",
                    target_type="hsm",
                    target_id=hsm.pk,
                    details={"name": hsm.name, "before": before, "after": fields},
                )
