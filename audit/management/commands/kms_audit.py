"""kms_audit verify | checkpoint

verify: exit 0 with a one-line summary when the chain and every checkpoint verify; exit 1 naming
the first broken sequence number otherwise.
checkpoint: sign the current chain head with the HSM's audit signing key now.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import CommandParser

from audit import services
from kms_console.lib.commands import KmsCommand


class Command(KmsCommand):
    help = "Verify the audit trail's hash chain and signed checkpoints, or sign a checkpoint now."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("verify", help="check the chain and the checkpoints")
        sub.add_parser("checkpoint", help="sign the chain head now")

    def run(self, *args: Any, **options: Any) -> None:
        if options["action"] == "checkpoint":
            checkpoint = services.sign_checkpoint()
            if checkpoint is None:
                self.stdout.write("Nothing new since the last checkpoint.")
            else:
                self.stdout.write(f"Signed checkpoint at #{checkpoint.seq} ({checkpoint.head_hash[:16]}…).")
            return
        result = services.verify_chain()
        services.record(
            "audit.verified",
            details={"ok": result.ok, "checked": result.checked, "first_bad_seq": result.first_bad_seq},
        )
        if result.ok:
            last = (
                f"last signed checkpoint at #{result.last_checkpoint_seq}"
                if result.last_checkpoint_seq
                else "no signed checkpoint yet"
            )
            self.stdout.write(
                f"OK: {result.checked} events verified, head #{result.head_seq} {result.head[:16]}…, "
                f"{result.checkpoints_checked} checkpoint(s) verified, {last}."
            )
            return
        self.stdout.write(
            f"BROKEN at #{result.first_bad_seq}: {result.reason} ({result.checked} events verified before it)."
        )
        sys.exit(1)
