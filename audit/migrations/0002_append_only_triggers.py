"""Refuse UPDATE and DELETE on the audit tables at the database level (PostgreSQL and SQLite)."""

from __future__ import annotations

from django.db import migrations

TABLES = ("audit_auditevent", "audit_checkpoint")

POSTGRES_FUNCTION = """
CREATE OR REPLACE FUNCTION kms_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES_FUNCTION, params=None)  # its % are PL/pgSQL, not placeholders
        for table in TABLES:
            schema_editor.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION kms_audit_append_only();"
            )
    elif vendor == "sqlite":
        # kms_audit_writable() is registered on every connection by audit.db and answers 0; a
        # connection without it fails the trigger with "no such function": closed by default.
        for table in TABLES:
            for op in ("UPDATE", "DELETE"):
                schema_editor.execute(
                    f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                    "WHEN kms_audit_writable() = 0 "
                    f"BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: {op} on {table} refused'); END;"
                )
    else:
        raise RuntimeError(f"append-only triggers are not written for the {vendor} database")


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        for table in TABLES:
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table};")
        schema_editor.execute("DROP FUNCTION IF EXISTS kms_audit_append_only();")
    elif vendor == "sqlite":
        for table in TABLES:
            for op in ("update", "delete"):
                schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_no_{op};")


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
