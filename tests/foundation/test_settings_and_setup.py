"""The foundation: settings from the environment, the deploy profile, set-up and HSM status commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from kms_console.lib.env import envbool, envint, envsecret, parse_database_url
from lifecycle.models import Hsm, Policy

ROOT = Path(__file__).resolve().parents[2]


def test_envbool_reads_the_usual_spellings_and_refuses_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMS_FLAG", "yes")
    assert envbool("KMS_FLAG", False) is True
    monkeypatch.setenv("KMS_FLAG", "off")
    assert envbool("KMS_FLAG", True) is False
    monkeypatch.setenv("KMS_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="KMS_FLAG must be a boolean"):
        envbool("KMS_FLAG", False)


def test_envint_refuses_text_and_out_of_range_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMS_N", "ten")
    with pytest.raises(ImproperlyConfigured, match="must be an integer"):
        envint("KMS_N", 1)
    monkeypatch.setenv("KMS_N", "5")
    with pytest.raises(ImproperlyConfigured, match="at least 60"):
        envint("KMS_N", 1, minimum=60)


def test_envsecret_prefers_the_variable_then_the_file_and_generates_a_private_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = tmp_path / "secrets" / "key"
    value = envsecret("KMS_TEST_SECRET", default, generate=True)
    assert value and default.read_text() == value
    assert oct(default.stat().st_mode & 0o777) == "0o600"
    assert envsecret("KMS_TEST_SECRET", default, generate=True) == value  # stable across runs
    named = tmp_path / "named"
    named.write_text("from-file\n")
    monkeypatch.setenv("KMS_TEST_SECRET_FILE", str(named))
    assert envsecret("KMS_TEST_SECRET", default) == "from-file"
    monkeypatch.setenv("KMS_TEST_SECRET", "from-env")
    assert envsecret("KMS_TEST_SECRET", default) == "from-env"
    monkeypatch.delenv("KMS_TEST_SECRET")
    monkeypatch.setenv("KMS_TEST_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="does not exist"):
        envsecret("KMS_TEST_SECRET", default)


def test_database_urls_for_sqlite_and_postgres(tmp_path: Path) -> None:
    sqlite = parse_database_url("sqlite:///var/kms.sqlite3", tmp_path)
    assert sqlite["ENGINE"].endswith("sqlite3")
    assert sqlite["NAME"] == str(tmp_path / "var" / "kms.sqlite3")
    assert parse_database_url("sqlite:////abs/db.sqlite3", tmp_path)["NAME"] == "/abs/db.sqlite3"
    pg = parse_database_url("postgres://kms:p%40ss@db.internal:5433/kms?sslmode=require", tmp_path)
    assert (pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"], pg["NAME"]) == (
        "kms",
        "p@ss",
        "db.internal",
        "5433",
        "kms",
    )
    assert pg["OPTIONS"] == {"sslmode": "require"}
    with pytest.raises(ImproperlyConfigured, match="not supported"):
        parse_database_url("mysql://x/y", tmp_path)


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_production_profile_passes_check_deploy_without_warnings(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KMS_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'deploy.sqlite3'}",
        "KMS_PUBLIC_URL": "https://kms.example.com",
        "DEBUG": "false",
    }
    for inherited in ("DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE", "SECRET_KEY", "SECRET_KEY_FILE"):
        env.pop(inherited, None)  # a fresh production process, not this test process's environment
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_kms_setup_is_idempotent_and_registers_the_default_hsm(kms: Any) -> None:
    call_command("kms_setup")
    call_command("kms_setup")
    assert Hsm.objects.filter(is_default=True).count() == 1
    assert Policy.objects.filter(name="standard").count() == 1
    assert Policy.objects.get(name="standard").versions.count() == 1


def test_kms_hsm_status_prints_health_and_object_count(kms: Any, capsys: pytest.CaptureFixture[str]) -> None:
    call_command("kms_hsm", "status")
    out = capsys.readouterr().out
    assert "token 'kms-test' OK" in out
    assert "objects" in out


def test_kms_hsm_status_fails_for_an_unknown_hsm(kms: Any) -> None:
    with pytest.raises(CommandError, match="no HSM named"):
        call_command("kms_hsm", "status", "--hsm", "nope")
