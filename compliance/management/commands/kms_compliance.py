"""kms_compliance load-catalog [--file PATH] | snapshot | status [--framework F]

load-catalog: bring the control catalog in line with data/controls.yaml (or --file); audited.
snapshot: take today's compliance snapshot now (what beat does nightly); idempotent per day.
status: print each framework's pass / warn / fail counts, or one framework's controls.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from kms_console.lib.commands import KmsCommand

from ... import services
from ...assessment import assess, framework_controls
from ...checks.base import STATUS_LABELS
from ...models import Framework


class Command(KmsCommand):
    help = "Load the compliance control catalog, take a snapshot, or print the current status."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        load = sub.add_parser("load-catalog", help="load data/controls.yaml (settings.KMS_CONTROLS_FILE)")
        load.add_argument("--file", help="another catalog file in the same format")
        sub.add_parser("snapshot", help="take today's snapshot now")
        status = sub.add_parser("status", help="print the status per framework")
        status.add_argument("--framework", help="list this framework's controls (slug or name)")

    def run(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "load-catalog":
            synced = services.load_catalog(path=options.get("file"))
            self.stdout.write(
                f"Catalog loaded: {synced.frameworks} frameworks, {synced.controls} controls "
                f"({synced.created} new, {synced.updated} changed, {synced.removed} removed)."
            )
        elif action == "snapshot":
            snapshot, created = services.take_snapshot()
            verb = "Took" if created else "Already had"
            self.stdout.write(f"{verb} the snapshot of {snapshot.day} (audit chain head #{snapshot.chain_seq}).")
        else:
            self._status(options.get("framework"))

    def _status(self, framework_name: str | None) -> None:
        assessment = assess()
        frameworks = [services.get_framework(framework_name)] if framework_name else list(Framework.objects.all())
        if not frameworks:
            self.stdout.write("No control catalog is loaded: run `manage.py kms_compliance load-catalog`.")
            return
        for framework in frameworks:
            result = assessment.framework(framework, framework_controls(framework))
            counts = ", ".join(f"{n} {STATUS_LABELS[s].lower()}" for s, n in result.counts.items())
            self.stdout.write(f"{framework.name}: {counts}")
            if framework_name:
                for row in result.controls:
                    self.stdout.write(f"  {row.control.control_id:<22} {row.status:<15} {row.figure}")
