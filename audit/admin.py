"""Admin registrations of the audit app: read-only, like every admin of the console (kms_console.lib.admin)."""

from __future__ import annotations

from kms_console.lib.admin import register_app_read_only

register_app_read_only("audit")
