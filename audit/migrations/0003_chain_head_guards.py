"""More database-level guards for the audit trail (PostgreSQL and SQLite).

1. The chain head only moves forward one event at a time and is never deleted, so a tail cut
   cannot be hidden by winding the head back.
2. A new event must carry the next sequence number and link to the head (prev_hash): the database
   itself refuses an event appended out of order or off the chain.
3. PostgreSQL: TRUNCATE of the events or checkpoints is refused too (row triggers do not see it).
The deliberate way around all of them, for tests only, is `audit.db.bypass_append_only()`.
"""

from __future__ import annotations

from django.db import migrations

POSTGRES = [
    """
    CREATE OR REPLACE FUNCTION kms_audit_head_guard() RETURNS trigger AS $$
    BEGIN
        IF TG_OP = 'DELETE' OR NEW.id <> OLD.id OR NEW.seq <> OLD.seq + 1 THEN
            RAISE EXCEPTION 'the audit chain head only moves forward one event at a time: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END;
    $$ LANGUAGE plpgsql;
    """,
    """
    CREATE TRIGGER audit_chainhead_guard BEFORE UPDATE OR DELETE ON audit_chainhead
    FOR EACH ROW EXECUTE FUNCTION kms_audit_head_guard();
    """,
    """
    CREATE OR REPLACE FUNCTION kms_audit_append_guard() RETURNS trigger AS $$
    DECLARE
        head_seq bigint;
        head_hash varchar(64);
    BEGIN
        SELECT seq, hash INTO head_seq, head_hash FROM audit_chainhead WHERE id = 1;
        IF head_seq IS NULL OR NEW.seq <> head_seq + 1 OR NEW.prev_hash <> head_hash THEN
            RAISE EXCEPTION 'an audit event must be appended at the chain head (event #% refused)', NEW.seq
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END;
    $$ LANGUAGE plpgsql;
    """,
    """
    CREATE TRIGGER audit_auditevent_append_guard BEFORE INSERT ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION kms_audit_append_guard();
    """,
    """
    CREATE TRIGGER audit_auditevent_no_truncate BEFORE TRUNCATE ON audit_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION kms_audit_append_only();
    """,
    """
    CREATE TRIGGER audit_checkpoint_no_truncate BEFORE TRUNCATE ON audit_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION kms_audit_append_only();
    """,
]

POSTGRES_BACKWARDS = [
    "DROP TRIGGER IF EXISTS audit_checkpoint_no_truncate ON audit_checkpoint;",
    "DROP TRIGGER IF EXISTS audit_auditevent_no_truncate ON audit_auditevent;",
    "DROP TRIGGER IF EXISTS audit_auditevent_append_guard ON audit_auditevent;",
    "DROP FUNCTION IF EXISTS kms_audit_append_guard();",
    "DROP TRIGGER IF EXISTS audit_chainhead_guard ON audit_chainhead;",
    "DROP FUNCTION IF EXISTS kms_audit_head_guard();",
]

# kms_audit_writable() is registered on every connection by audit.db and answers 0 (see 0002).
SQLITE = [
    """
    CREATE TRIGGER audit_chainhead_no_delete BEFORE DELETE ON audit_chainhead
    WHEN kms_audit_writable() = 0
    BEGIN SELECT RAISE(ABORT, 'the audit chain head is never deleted: DELETE refused'); END;
    """,
    """
    CREATE TRIGGER audit_chainhead_forward_only BEFORE UPDATE ON audit_chainhead
    WHEN kms_audit_writable() = 0 AND (NEW.id <> OLD.id OR NEW.seq <> OLD.seq + 1)
    BEGIN SELECT RAISE(ABORT, 'the audit chain head only moves forward one event at a time: UPDATE refused'); END;
    """,
    """
    CREATE TRIGGER audit_auditevent_append_guard BEFORE INSERT ON audit_auditevent
    WHEN kms_audit_writable() = 0 AND NOT EXISTS (
        SELECT 1 FROM audit_chainhead WHERE id = 1 AND seq + 1 = NEW.seq AND hash = NEW.prev_hash
    )
    BEGIN SELECT RAISE(ABORT, 'an audit event must be appended at the chain head: INSERT refused'); END;
    """,
]

SQLITE_BACKWARDS = [
    "DROP TRIGGER IF EXISTS audit_auditevent_append_guard;",
    "DROP TRIGGER IF EXISTS audit_chainhead_forward_only;",
    "DROP TRIGGER IF EXISTS audit_chainhead_no_delete;",
]


def _run(schema_editor, statements: dict[str, list[str]]) -> None:
    vendor = schema_editor.connection.vendor
    if vendor not in statements:
        raise RuntimeError(f"audit guards are not written for the {vendor} database")
    for statement in statements[vendor]:
        schema_editor.execute(statement, params=None)  # % in PL/pgSQL are not placeholders


def forwards(apps, schema_editor):
    _run(schema_editor, {"postgresql": POSTGRES, "sqlite": SQLITE})


def backwards(apps, schema_editor):
    _run(schema_editor, {"postgresql": POSTGRES_BACKWARDS, "sqlite": SQLITE_BACKWARDS})


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_append_only_triggers")]

    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
