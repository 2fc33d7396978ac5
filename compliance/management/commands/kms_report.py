"""kms_report --framework F --format csv|json|pdf|oscal -o FILE

Computes the framework's compliance report now and writes it to FILE ("-" for standard output).
The export is recorded in the audit trail (compliance.report_exported, via cli) with the file's
SHA-256, like a download from the console or the API.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from kms_console.lib.commands import KmsCommand

from ... import services
from ...reports import FORMATS


class Command(KmsCommand):
    help = "Export a framework's compliance report as CSV, JSON, PDF or OSCAL assessment results."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--framework", required=True, help="pci-dss, hipaa, nist-800-53, nist-800-57 (or the name)")
        parser.add_argument("--format", required=True, choices=sorted(FORMATS), dest="fmt")
        parser.add_argument("-o", "--output", required=True, help="file to write, or - for standard output")

    def run(self, *args: Any, **options: Any) -> None:
        framework = services.get_framework(options["framework"])
        output = options["output"]
        if output != "-":
            target = Path(output)
            if not target.parent.is_dir():
                raise CommandError(f"The directory {target.parent} does not exist.")
        exported = services.export_report(framework=framework, fmt=options["fmt"])
        if output == "-":
            sys.stdout.buffer.write(exported.content)
            sys.stdout.flush()
            return
        try:
            Path(output).write_bytes(exported.content)
        except OSError as exc:
            raise CommandError(f"Cannot write {output}: {exc.strerror or exc}") from None
        summary = exported.report["summary"]
        self.stderr.write(
            f"Wrote {output} ({len(exported.content)} bytes): {framework.name}, {summary['pass']} pass, "
            f"{summary['warn']} warn, {summary['fail']} fail, {summary['not_assessed']} not assessed; "
            f"audit chain head #{exported.report['audit_chain_head']['seq']}."
        )
