"""Throughput of the PKCS#11 driver on a throwaway SoftHSM2 token (not part of the test suite).

    .venv/bin/python bench/hsm_driver.py [--seconds 3] [--threads 1]

Prints operations per second for key generation, AES-GCM encrypt/decrypt (1 KiB), ECDSA sign and
HMAC, through the same driver object the console uses (lock, cached handles).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rate(label: str, seconds: float, threads: int, operation: Callable[[], object]) -> None:
    counts = [0] * threads
    deadline = time.monotonic() + seconds

    def worker(index: int) -> None:
        while time.monotonic() < deadline:
            operation()
            counts[index] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    print(f"{label:<32} {sum(counts) / seconds:>10.1f} ops/s  ({threads} thread(s))")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from lifecycle.hsm import softhsm
    from lifecycle.hsm.pkcs11 import Pkcs11Backend

    root = Path(tempfile.mkdtemp(prefix="kms-bench-"))
    conf = root / "softhsm2.conf"
    softhsm.write_config(conf, root / "tokens")
    pin = softhsm.new_pin()
    softhsm.init_token(conf, "bench", softhsm.new_pin(), pin)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ["KMS_BENCH_PIN"] = pin
    backend = Pkcs11Backend(module="/usr/lib/softhsm/libsofthsm2.so", token_label="bench", pin_env="KMS_BENCH_PIN")

    aes, ec_key, mac_key = (secrets.token_bytes(16) for _ in range(3))
    backend.generate("AES-256", aes, usage="encrypt_decrypt", label="bench")
    backend.generate("EC-P256", ec_key, usage="sign_verify", label="bench")
    backend.generate("HMAC-SHA256", mac_key, usage="mac", label="bench")
    data = os.urandom(1024)
    blob = backend.encrypt(aes, data)

    rate(
        "AES-256 token keygen",
        args.seconds,
        args.threads,
        lambda: backend.generate("AES-256", secrets.token_bytes(16), usage="encrypt_decrypt", label="bench"),
    )
    rate("AES-GCM encrypt 1 KiB", args.seconds, args.threads, lambda: backend.encrypt(aes, data))
    rate("AES-GCM decrypt 1 KiB", args.seconds, args.threads, lambda: backend.decrypt(aes, blob))
    rate("ECDSA P-256 sign", args.seconds, args.threads, lambda: backend.sign(ec_key, "EC-P256", data))
    rate("HMAC-SHA256", args.seconds, args.threads, lambda: backend.mac(mac_key, data))


if __name__ == "__main__":
    main()
