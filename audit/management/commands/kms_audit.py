"""kms_audit verify | checkpoint | export

verify: exit 0 with a one-line summary when the chain and every checkpoint verify; exit 1 naming
the first broken sequence number otherwise.
checkpoint: sign the current chain head with the HSM's audit signing key now.
export [-o FILE] [--since SEQ] [--public-key-only]: the trail as JSON Lines for outside anchoring
(check it offline with tools/verify_audit_export.py), or only the signing public key (PEM).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, TextIO

from django.core.management.base import CommandError, CommandParser

from audit import services
from kms_console.lib.commands import KmsCommand


class Command(KmsCommand):
    help = "Verify the audit trail's hash chain and signed checkpoints, sign a checkpoint now, or export the trail."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("verify", help="check the chain and the checkpoints")
        sub.add_parser("checkpoint", help="sign the chain head now")
        export = sub.add_parser("export", help="write the trail as JSON Lines (header, events, checkpoints)")
        export.add_argument("-o", "--output", help="file to write (created with mode 0600); default: stdout")
        export.add_argument("--since", type=int, default=1, help="first sequence number to export (default 1)")
        export.add_argument(
            "--public-key-only", action="store_true", help="write only the audit signing public key (PEM)"
        )

    def run(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "checkpoint":
            self._checkpoint()
        elif action == "export":
            self._export(options)
        else:
            self._verify()

    def _checkpoint(self) -> None:
        checkpoint = services.sign_checkpoint()
        if checkpoint is None:
            self.stdout.write("Nothing new since the last checkpoint.")
        else:
            self.stdout.write(f"Signed checkpoint at #{checkpoint.seq} ({checkpoint.head_hash[:16]}).")

    def _verify(self) -> None:
        result = services.verify_chain()
        services.record_verification(result)
        self.stdout.write(result.summary())
        if not result.ok:
            sys.exit(1)

    def _export(self, options: dict[str, Any]) -> None:
        if options["since"] < 1:
            raise CommandError("--since must be a sequence number of 1 or more")
        output = options.get("output")
        if options["public_key_only"]:
            pem = services.signing_key_info()["public_key_pem"]
            if output:
                with _open_output(output) as fh:
                    fh.write(pem)
                self.stderr.write(f"Wrote the audit signing public key to {output}.")
            else:
                self.stdout.write(pem, ending="")
            return
        if output:
            with _open_output(output) as fh:
                summary = services.export_trail(fh, since=options["since"])
        else:
            summary = services.export_trail(_StdoutWriter(self.stdout), since=options["since"])
        first = summary.since if summary.events else "-"
        self.stderr.write(
            f"Exported {summary.events} events (#{first} to #{summary.through}) and {summary.checkpoints} "
            f"checkpoint(s){' to ' + output if output else ''}; sha256 {summary.sha256}."
        )


def _open_output(path: str) -> TextIO:
    target = Path(path)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise CommandError(f"cannot write {target}: {exc.strerror}") from None
    return os.fdopen(fd, "w", encoding="utf-8")


class _StdoutWriter:
    """Lets the export write through the command's stdout (which call_command can capture)."""

    def __init__(self, stdout: Any) -> None:
        self._stdout = stdout

    def write(self, text: str) -> int:
        self._stdout.write(text, ending="")
        return len(text)
