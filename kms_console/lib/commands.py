"""Shared bits of our management commands: the audit context and readable failures."""

from __future__ import annotations

import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.context import acting
from kms_console.lib.errors import ApplicationError


class KmsCommand(BaseCommand):
    """Runs `run()` as an operator action (audited with via=cli) and turns refusals into exit 1."""

    def handle(self, *args: Any, **options: Any) -> Any:
        with acting(None, via="cli", source=socket.gethostname()[:64]):
            try:
                return self.run(*args, **options)
            except ApplicationError as exc:
                raise CommandError(exc.message) from None

    def run(self, *args: Any, **options: Any) -> Any:
        raise NotImplementedError  # each command implements it
