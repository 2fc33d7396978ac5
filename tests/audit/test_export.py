"""Issue 5, item 6: `kms_audit export` and the offline verifier in tools/ (run as a separate process)."""

from __future__ import annotations

import ast
import hashlib
import json
import stat
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from audit import services
from audit.chain import chain_hash, verify_events
from audit.models import AuditEvent, Checkpoint
from lifecycle.audit_signer import HsmAuditSigner
from tests.audit.tampering import CASES, Trail, build_trail

pytestmark = pytest.mark.django_db

TOOL = Path(settings.BASE_DIR) / "tools" / "verify_audit_export.py"


@pytest.fixture
def trail(kms: Any) -> Trail:
    return build_trail()


@pytest.fixture
def public_key(tmp_path: Path, kms: Any) -> Path:
    path = tmp_path / "audit-signing.pem"
    call_command("kms_audit", "export", "--public-key-only", "-o", str(path), stderr=StringIO())
    return path


def export(tmp_path: Path, *args: str, name: str = "trail.jsonl") -> Path:
    path = tmp_path / name
    call_command("kms_audit", "export", "-o", str(path), *args, stderr=StringIO())
    return path


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_lines(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def offline(export_file: Path, key_file: Path) -> tuple[int, str]:
    """Run the verifier the way an outside party does: its own process, isolated from the project."""
    done = subprocess.run(
        [sys.executable, "-I", str(TOOL), str(export_file), "--public-key", str(key_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stderr == ""
    return done.returncode, done.stdout


# --- The export -----------------------------------------------------------------------------------


def test_the_export_holds_a_header_every_event_every_checkpoint_and_an_end_line(trail: Trail, tmp_path: Path) -> None:
    path = export(tmp_path)
    lines = lines_of(path)
    header, end = lines[0], lines[-1]
    events = [line for line in lines if line["type"] == "event"]
    checkpoints = [line for line in lines if line["type"] == "checkpoint"]
    # The export signed the head first, so everything in it is covered by a signature.
    last = Checkpoint.objects.order_by("-seq").first()
    assert last.seq == trail.head + 1
    assert header["format"] == "kms-audit-export"
    assert header["version"] == 1
    assert header["since"] == 1
    assert header["through"] == last.seq
    assert header["chain_head"] == {"seq": last.seq, "hash": last.head_hash}
    assert header["exported_at"].endswith("Z")
    signer = HsmAuditSigner()
    assert header["signing_key"] == {
        "key_id": signer.key_id,
        "algorithm": "ECDSA-P256-SHA256",
        "public_key_pem": signer.public_key_pem(),
    }
    assert [e["seq"] for e in events] == list(range(1, last.seq + 1))
    assert [c["seq"] for c in checkpoints] == [trail.c1, trail.c2, last.seq]
    assert end == {"type": "end", "events": len(events), "checkpoints": 3}
    assert len(lines) == 1 + len(events) + 3 + 1
    stored = AuditEvent.objects.get(seq=5)
    assert events[4]["hash"] == stored.hash
    fields = {k: v for k, v in events[4].items() if k not in {"type", "prev_hash", "hash"}}
    assert chain_hash(events[4]["prev_hash"], fields) == stored.hash
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_export_is_on_record_with_the_digest_of_the_file(trail: Trail, tmp_path: Path) -> None:
    path = export(tmp_path)
    event = AuditEvent.objects.order_by("-seq").first()
    header = lines_of(path)[0]
    assert (event.action, event.via, event.target_type) == ("audit.exported", "cli", "audit")
    assert event.details == {
        "since": 1,
        "through": header["through"],
        "events": header["through"],
        "checkpoints": 3,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def test_the_export_can_go_to_stdout(trail: Trail) -> None:
    out, err = StringIO(), StringIO()
    call_command("kms_audit", "export", stdout=out, stderr=err)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["type"] == "header"
    assert lines[-1]["type"] == "end"
    assert err.getvalue().startswith(f"Exported {lines[0]['through']} events (#1 to #{lines[0]['through']})")


def test_an_export_since_a_sequence_number_verifies_offline(trail: Trail, tmp_path: Path, public_key: Path) -> None:
    path = export(tmp_path, "--since", str(trail.c1 + 1))
    lines = lines_of(path)
    events = [line for line in lines if line["type"] == "event"]
    assert events[0]["seq"] == trail.c1 + 1
    code, output = offline(path, public_key)
    assert code == 0, output
    assert output.startswith(f"OK: {len(events)} events verified (#{trail.c1 + 1} to #{lines[0]['through']})")


def test_the_public_key_alone_can_be_written_and_nothing_is_recorded(kms: Any, tmp_path: Path) -> None:
    out = StringIO()
    before = AuditEvent.objects.count()
    call_command("kms_audit", "export", "--public-key-only", stdout=out)
    key = serialization.load_pem_public_key(out.getvalue().encode())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert out.getvalue() == HsmAuditSigner().public_key_pem()
    assert AuditEvent.objects.count() == before


@pytest.mark.parametrize("since", ["0", "-3"])
def test_a_bad_since_is_refused(kms: Any, since: str) -> None:
    with pytest.raises(CommandError, match="--since"):
        call_command("kms_audit", "export", "--since", since, stdout=StringIO())


def test_an_unwritable_output_is_a_clear_error(kms: Any, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="cannot write"):
        call_command("kms_audit", "export", "-o", str(tmp_path / "no-such-dir" / "x.jsonl"), stderr=StringIO())


# --- The offline verifier -------------------------------------------------------------------------


def test_the_verifier_needs_only_the_standard_library_and_cryptography() -> None:
    tree = ast.parse(TOOL.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert roots - set(sys.stdlib_module_names) == {"cryptography"}


def test_a_good_export_verifies_offline(trail: Trail, tmp_path: Path, public_key: Path) -> None:
    path = export(tmp_path)
    through = lines_of(path)[0]["through"]
    code, output = offline(path, public_key)
    assert code == 0
    assert output == (
        f"OK: {through} events verified (#1 to #{through}), head {lines_of(path)[0]['chain_head']['hash'][:16]}, "
        f"3 checkpoint(s) verified, last signed checkpoint at #{through}.\n"
    )


def edit_event(lines: list[dict[str, Any]], seq: int, **changes: Any) -> None:
    for line in lines:
        if line["type"] == "event" and line["seq"] == seq:
            line.update(changes)


def drop_events(lines: list[dict[str, Any]], keep: Any) -> list[dict[str, Any]]:
    kept = [line for line in lines if line["type"] != "event" or keep(line["seq"])]
    kept[-1]["events"] = sum(1 for line in kept if line["type"] == "event")
    return kept


def test_offline_an_edited_event_is_named(trail: Trail, tmp_path: Path, public_key: Path) -> None:
    path = export(tmp_path)
    lines = lines_of(path)
    edit_event(lines, trail.middle, actor="someone-else")
    write_lines(path, lines)
    code, output = offline(path, public_key)
    assert (code, output.split(":")[0]) == (1, f"BROKEN at #{trail.middle}")


def test_offline_a_removed_event_is_named(trail: Trail, tmp_path: Path, public_key: Path) -> None:
    path = export(tmp_path)
    write_lines(path, drop_events(lines_of(path), lambda seq: seq != trail.middle))
    code, output = offline(path, public_key)
    assert (code, output.split(":")[0]) == (1, f"BROKEN at #{trail.middle}")


def test_offline_a_cut_tail_is_named(trail: Trail, tmp_path: Path, public_key: Path) -> None:
    path = export(tmp_path)
    lines = drop_events(lines_of(path), lambda seq: seq < trail.c2 - 1)
    lines[0]["through"] = trail.c2 - 2
    lines[0]["chain_head"] = {"seq": trail.c2 - 2, "hash": "whatever"}
    write_lines(path, lines)
    code, output = offline(path, public_key)
    assert (code, output.split(":")[0]) == (1, f"BROKEN at #{trail.c2 - 1}")


def test_offline_a_rewritten_chain_is_caught_by_a_checkpoint(trail: Trail, tmp_path: Path, public_key: Path) -> None:
    path = export(tmp_path)
    lines = lines_of(path)
    edit_event(lines, trail.middle, details={"n": "rewritten"})
    prev = None
    for line in lines:  # recompute every hash from the edited event on
        if line["type"] == "event" and line["seq"] >= trail.middle:
            line["prev_hash"] = prev
            line["hash"] = chain_hash(prev, {k: v for k, v in line.items() if k not in {"type", "prev_hash", "hash"}})
        if line["type"] == "event":
            prev = line["hash"]
    write_lines(path, lines)
    code, output = offline(path, public_key)
    assert (code, output.split(":")[0]) == (1, f"BROKEN at #{trail.c1 + 1}")
    assert "chain rewritten" in output


def test_offline_a_forged_checkpoint_is_named(trail: Trail, tmp_path: Path, public_key: Path) -> None:
    path = export(tmp_path)
    lines = lines_of(path)
    for line in lines:
        if line["type"] == "checkpoint" and line["seq"] == trail.c2:
            line["signature"] = line["signature"][:-2] + format(int(line["signature"][-2:], 16) ^ 1, "02x")
    write_lines(path, lines)
    code, output = offline(path, public_key)
    assert (code, output.split(":")[0]) == (1, f"BROKEN at #{trail.c2}")
    assert "forged" in output


def test_offline_another_public_key_verifies_no_checkpoint(trail: Trail, tmp_path: Path) -> None:
    path = export(tmp_path)
    other = tmp_path / "other.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    code, output = offline(path, other)
    assert (code, output.split(":")[0]) == (1, f"BROKEN at #{trail.c1}")
    assert "forged" in output


def test_offline_removed_checkpoint_lines_are_missed(trail: Trail, tmp_path: Path, public_key: Path) -> None:
    path = export(tmp_path)
    lines = [line for line in lines_of(path) if line["type"] != "checkpoint"]
    lines[-1]["checkpoints"] = 0
    write_lines(path, lines)
    code, output = offline(path, public_key)
    # The trail itself announces every checkpoint it got.
    assert (code, output.split(":")[0]) == (1, f"BROKEN at #{trail.c1}")
    assert "missing" in output


def test_offline_events_that_no_checkpoint_covers_are_vouched_for_by_nothing(
    trail: Trail, tmp_path: Path, public_key: Path
) -> None:
    path = export(tmp_path)
    lines = [line for line in lines_of(path) if line["type"] == "event" and line["seq"] < trail.c1]
    header = lines_of(path)[0]
    header.update(through=trail.c1 - 1, chain_head={"seq": trail.c1 - 1, "hash": lines[-1]["hash"]})
    write_lines(path, [header, *lines, {"type": "end", "events": len(lines), "checkpoints": 0}])
    code, output = offline(path, public_key)
    assert code == 1
    assert "nothing in the file is vouched for" in output


def test_offline_events_added_after_the_last_checkpoint_are_refused(
    trail: Trail, tmp_path: Path, public_key: Path
) -> None:
    """A careful forger appends a well-linked event and fixes the counts; no signature covers it."""
    path = export(tmp_path)
    lines = lines_of(path)
    events = [line for line in lines if line["type"] == "event"]
    last = events[-1]
    forged = {**last, "seq": last["seq"] + 1, "action": "key.destroyed", "details": {}, "prev_hash": last["hash"]}
    forged["hash"] = chain_hash(
        last["hash"], {k: v for k, v in forged.items() if k not in {"type", "prev_hash", "hash"}}
    )
    lines.insert(lines.index(last) + 1, forged)
    lines[0]["through"] = forged["seq"]
    lines[-1]["events"] += 1
    write_lines(path, lines)
    code, output = offline(path, public_key)
    assert (code, output.split(":")[0]) == (1, f"BROKEN at #{forged['seq']}")
    assert "covered by no checkpoint" in output


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda text: text.rsplit('{"checkpoints"', 1)[0], "no end line"),
        (lambda text: text.replace('"type":"event"', '"type":"evnt"', 1), "unknown type"),
        (lambda text: text + "not json\n", "not JSON"),
        (lambda text: "\n".join(text.splitlines()[1:]) + "\n", "not the header"),
        (lambda text: "", "empty"),
    ],
    ids=["cut short", "unknown line", "garbage appended", "no header", "empty file"],
)
def test_offline_a_damaged_file_is_invalid(
    trail: Trail, tmp_path: Path, public_key: Path, damage: Any, message: str
) -> None:
    path = export(tmp_path)
    path.write_text(damage(path.read_text(encoding="utf-8")), encoding="utf-8")
    code, output = offline(path, public_key)
    assert code == 2
    assert output.startswith("INVALID: ")
    assert message in output


def test_offline_an_unreadable_key_is_invalid(trail: Trail, tmp_path: Path) -> None:
    path = export(tmp_path)
    bad_key = tmp_path / "bad.pem"
    bad_key.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    assert offline(path, bad_key)[0] == 2
    assert offline(path, tmp_path / "missing.pem")[0] == 2


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_offline_and_in_database_verification_agree_on_every_tamper_case(
    trail: Trail, tmp_path: Path, public_key: Path, case: str
) -> None:
    CASES[case](trail)
    path = export(tmp_path)  # refuses to sign the broken chain (on record); exports it all the same
    # The database's verdict on exactly what was exported (the export itself appended one event).
    through = lines_of(path)[0]["through"]
    in_database = verify_events(
        AuditEvent.objects.filter(seq__lte=through).order_by("seq"),
        list(Checkpoint.objects.order_by("seq")),
        services._signature_check(HsmAuditSigner()),
        head=(through, lines_of(path)[0]["chain_head"]["hash"]),
    )
    assert not in_database.ok
    code, output = offline(path, public_key)
    assert code == 1, output
    assert output.startswith(f"BROKEN at #{in_database.first_bad_seq}: "), (output, in_database.problems)
