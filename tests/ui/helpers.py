"""Helpers of the console tests: a small estate made through the real engine, and page lists."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from approvals.services import open_request
from lifecycle.models import Job
from tests.lifecycle.helpers import generate_key, on_commit

CONSOLE_ROLES = frozenset({"key_admin", "custodian", "security_officer", "auditor"})
EVERYONE = CONSOLE_ROLES


def make_estate(alice: Any, bob: Any, carol: Any, clock: Any) -> SimpleNamespace:
    """One active AES key (generated on the token through two approvals) and a pending rotation."""
    key = generate_key(alice, [bob, carol], clock, name="payments")
    with on_commit():
        rotation = open_request(
            operation="rotate",
            requester=alice,
            justification="Yearly rotation of the payments key.",
            target_id=str(key.pk),
            parameters={},
        )
    return SimpleNamespace(key=key, rotation=rotation, job=Job.objects.get(key=key))


def page_matrix(estate: SimpleNamespace) -> dict[str, frozenset[str]]:
    """Every console page (GET) and the roles that may open it."""
    key, req, job = estate.key, estate.rotation, estate.job
    return {
        "/": EVERYONE,
        "/keys/": EVERYONE,
        f"/keys/{key.pk}/": EVERYONE,
        "/keys/new/": frozenset({"key_admin"}),
        f"/keys/{key.pk}/request/rotate/": frozenset({"key_admin"}),
        f"/keys/{key.pk}/request/suspend/": frozenset({"key_admin", "custodian", "security_officer"}),
        f"/keys/{key.pk}/request/grant/": frozenset({"key_admin", "security_officer"}),
        "/requests/": EVERYONE,
        "/requests/?view=all": EVERYONE,
        "/requests/new/": EVERYONE,
        f"/requests/{req.pk}/": EVERYONE,
        "/policies/": EVERYONE,
        "/policies/standard/": EVERYONE,
        "/policies/standard/propose/": frozenset({"security_officer"}),
        "/policies/new/": frozenset({"security_officer"}),
        "/custodians/": EVERYONE,
        "/custodians/bob/roles/": frozenset({"security_officer"}),
        "/hsms/": EVERYONE,
        "/hsms/register/": frozenset({"security_officer"}),
        "/jobs/": EVERYONE,
        f"/jobs/{job.pk}/": EVERYONE,
        f"/jobs/status/?id={job.pk}": EVERYONE,
        "/audit/": frozenset({"auditor", "security_officer"}),
    }
