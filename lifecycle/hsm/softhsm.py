"""Making SoftHSM2 tokens for a local install and for the tests (softhsm2-util, ~20 ms a token)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

SOFTHSM_UTIL = "softhsm2-util"


class SoftHsmSetupError(RuntimeError):
    pass


def write_config(conf_path: Path, token_dir: Path) -> None:
    """A config of our own: file object store, no reset on fork (we re-initialise ourselves)."""
    token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf_path.parent.mkdir(parents=True, exist_ok=True)
    conf_path.write_text(
        "# Written by the KMS console setup. Token objects live in the directory below.\n"
        f"directories.tokendir = {token_dir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
        "slots.mechanisms = ALL\n"
        "library.reset_on_fork = false\n"
    )


def write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")


def new_pin() -> str:
    return secrets.token_hex(16)


def token_exists(conf_path: Path, label: str) -> bool:
    result = subprocess.run(
        [SOFTHSM_UTIL, "--show-slots"],
        env={**os.environ, "SOFTHSM2_CONF": str(conf_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    return any(line.strip() == f"Label:            {label}" for line in result.stdout.splitlines()) or (
        f"Label:            {label}\n" in result.stdout
    )


def init_token(conf_path: Path, label: str, so_pin: str, user_pin: str) -> None:
    """Initialise a fresh token in the first free slot. PINs go through the environment, not argv."""
    if shutil.which(SOFTHSM_UTIL) is None:
        raise SoftHsmSetupError("softhsm2-util is not installed (Debian/Ubuntu: apt install softhsm2)")
    # softhsm2-util only takes PINs as arguments; keep them off the process list as far as it allows
    # by running it briefly, and never log the command line.
    result = subprocess.run(
        [SOFTHSM_UTIL, "--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", user_pin],
        env={**os.environ, "SOFTHSM2_CONF": str(conf_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        # The output names the slot and the label, never the PINs; still, say only what failed.
        raise SoftHsmSetupError(f"softhsm2-util could not initialise token {label!r} (exit {result.returncode})")
