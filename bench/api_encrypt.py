"""Requests per second of POST /api/v1/keys/{id}/encrypt/ and /decrypt/, through Django's test client.

Not part of the test suite (speed is measured here, never asserted in tests). Everything is
throwaway: a SoftHSM2 token in a temporary directory, an in-memory SQLite database, a service
account with a dual-controlled grant on an AES-256 key. Run from the checkout root:

    .venv/bin/python bench/api_encrypt.py [--requests 2000] [--size 1024]

The numbers include the whole request path: token authentication, the roles and grant checks,
the usage rule, the HSM call (AES-GCM on SoftHSM, cached object handle), the per-day usage count
(one UPDATE) and JSON rendering.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prepare_token(root: Path) -> None:
    """A fresh SoftHSM2 token, configured for this process before Django loads settings."""
    from lifecycle.hsm import softhsm

    conf = root / "softhsm2.conf"
    softhsm.write_config(conf, root / "tokens")
    pin = softhsm.new_pin()
    softhsm.init_token(conf, "kms-bench", softhsm.new_pin(), pin)
    os.environ.update(
        SOFTHSM2_CONF=str(conf),
        KMS_HSM_PIN=pin,
        KMS_HSM_TOKEN_LABEL="kms-bench",
        KMS_HSM_PIN_FILE=str(root / "none"),
        KMS_VAR_DIR=str(root / "var"),
        DATABASE_URL="sqlite:///:memory:",
        CELERY_BROKER_URL="memory://",
        KMS_API_RATE="100000000/min",
    )


def setup_world() -> tuple[Any, Any]:
    """Database, policy, users and a granted AES key: the production path (requests and approvals)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kms_console.settings")
    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.test.utils import setup_test_environment
    from django.utils import timezone
    from django_otp.oath import totp
    from django_otp.plugins.otp_totp.models import TOTPDevice
    from rest_framework.test import APIClient

    from accounts.services import acknowledge, create_token
    from approvals.services import decide, open_request
    from kms_console.celery import app
    from lifecycle.audit_signer import ensure_signing_key
    from lifecycle.models import Hsm, Key
    from lifecycle.policies import STANDARD_POLICY, standard_settings
    from lifecycle.services.policies import policy_apply

    setup_test_environment()
    settings.ALLOWED_HOSTS = ["testserver"]
    connection.creation.create_test_db(verbosity=0)
    app.conf.task_always_eager = True

    Hsm.objects.create(
        name="default",
        module=settings.KMS_PKCS11_MODULE,
        token_label="kms-bench",
        pin_env="KMS_HSM_PIN",
        is_default=True,
        registered_at=timezone.now(),
    )
    ensure_signing_key()
    policy_apply(name=STANDARD_POLICY, settings=standard_settings(), actor=None)

    def user(name: str, role: str) -> Any:
        person = get_user_model().objects.create_user(username=name)
        person.groups.set([Group.objects.get_or_create(name=role)[0]])
        if role != "api_client":
            TOTPDevice.objects.create(user=person, name="bench", confirmed=True)
        if role == "custodian":
            acknowledge(user=person)
        return person

    def code(person: Any) -> str:
        device = TOTPDevice.objects.get(user=person)
        return f"{totp(device.bin_key, device.step, device.t0, device.digits, device.drift):06d}"

    admin, first, second, service = (
        user("admin", "key_admin"),
        user("c1", "custodian"),
        user("c2", "custodian"),
        user("svc", "api_client"),
    )
    req = open_request(
        operation="generate",
        requester=admin,
        justification="bench",
        parameters={"name": "bench-key", "algorithm": "AES-256", "usage": "encrypt_decrypt"},
    )
    for approver in (first, second):
        decide(request_id=req.pk, approver=approver, decision="approve", otp=code(approver), digest=req.digest)
    key = Key.objects.get(name="bench-key")
    grant = open_request(
        operation="grant",
        requester=admin,
        justification="bench",
        target_id=str(key.pk),
        parameters={"grantee": "svc", "operations": ["encrypt", "decrypt"]},
    )
    time.sleep(31)  # the first approver's code of this time step was used already (no replays)
    decide(request_id=grant.pk, approver=first, decision="approve", otp=code(first), digest=grant.digest)
    _, raw = create_token(user=service, scopes=["use"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client, key


def measure(label: str, count: int, call: Any) -> None:
    call()  # warm-up: session, handle cache, today's usage row
    started = time.perf_counter()
    for _ in range(count):
        call()
    elapsed = time.perf_counter() - started
    print(f"{label:8s} {count:6d} requests in {elapsed:6.2f} s: {count / elapsed:8.1f} req/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per operation (default 2000)")
    parser.add_argument("--size", type=int, default=1024, help="plaintext bytes (default 1024)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kms-bench-") as tmp:
        prepare_token(Path(tmp))
        client, key = setup_world()
        body = {"plaintext": base64.b64encode(os.urandom(args.size)).decode()}
        encrypt_url = f"/api/v1/keys/{key.pk}/encrypt/"
        decrypt_url = f"/api/v1/keys/{key.pk}/decrypt/"
        ciphertext = client.post(encrypt_url, body, format="json").json()["ciphertext"]

        def encrypt() -> None:
            response = client.post(encrypt_url, body, format="json")
            assert response.status_code == 200, response.content

        def decrypt() -> None:
            response = client.post(decrypt_url, {"ciphertext": ciphertext}, format="json")
            assert response.status_code == 200, response.content

        print(f"AES-256-GCM, {args.size}-byte plaintext, Django test client, SQLite in memory, SoftHSM2")
        measure("encrypt", args.requests, encrypt)
        measure("decrypt", args.requests, decrypt)


if __name__ == "__main__":
    main()
