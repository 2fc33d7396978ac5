"""Load the control catalog (settings.KMS_CONTROLS_FILE) so that a fresh install has it.

Later changes to the file are applied with `manage.py kms_compliance load-catalog`. No audit event
is recorded here: migrations build the installation before its audit trail is in use.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import migrations


def load(apps, schema_editor):
    from compliance.catalog import read_catalog, sync_catalog

    path = Path(settings.KMS_CONTROLS_FILE)
    if not path.exists():
        return  # an installation without a catalog file; the dashboard says how to load one
    sync_catalog(read_catalog(path), apps.get_model("compliance", "Framework"), apps.get_model("compliance", "Control"))


class Migration(migrations.Migration):
    dependencies = [("compliance", "0001_initial")]

    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
