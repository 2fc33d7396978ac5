"""kms_hsm status [--hsm NAME] [--json]: the token's health, object count and mechanisms."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from django.core.management.base import CommandError, CommandParser

from kms_console.lib.commands import KmsCommand
from lifecycle.hsm import default_backend
from lifecycle.models import Hsm


class Command(KmsCommand):
    help = "Show the health of a registered HSM token."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        status = sub.add_parser("status")
        status.add_argument("--hsm", help="a registered HSM's name (default: the configured token)")
        status.add_argument("--json", action="store_true")

    def run(self, *args: Any, **options: Any) -> None:
        if options["hsm"]:
            hsm = Hsm.objects.filter(name=options["hsm"]).first()
            if hsm is None:
                raise CommandError(f"no HSM named {options['hsm']!r}")
            backend = hsm.backend()
        else:
            backend = default_backend()
        health = backend.health()
        if options["json"]:
            self.stdout.write(json.dumps(asdict(health), indent=2))
        elif health.ok:
            self.stdout.write(
                f"token {health.token_label!r} OK: {health.manufacturer} {health.model} serial {health.serial}, "
                f"{health.object_count} objects, {len(health.mechanisms)} mechanisms"
            )
        else:
            self.stdout.write(f"token {health.token_label!r} UNAVAILABLE: {health.error}")
        if not health.ok:
            raise CommandError("the HSM is not healthy")
