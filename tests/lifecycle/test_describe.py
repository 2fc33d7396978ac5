"""What approvers read: the plain-words description of a generation request."""

from __future__ import annotations

from typing import Any

import pytest

from approvals import registry
from approvals.services import open_request
from kms_console.lib.errors import ApplicationError


def describe_generation(alice: Any, name: str = "described", **extra: Any) -> str:
    req = open_request(
        operation="generate",
        requester=alice,
        justification="describe it",
        parameters={
            "name": name,
            "algorithm": "AES-256",
            "usage": "encrypt_decrypt",
            **extra,
        },
    )
    return registry.get("generate").describe(req)


def test_a_key_activated_now_says_so_without_a_date(alice: Any, clock: Any) -> None:
    text = describe_generation(alice)
    assert "becomes active as soon as it is generated" in text
    assert "whichever" not in text


def test_a_later_activation_date_is_named(alice: Any, clock: Any) -> None:
    text = describe_generation(alice, activate_at="2026-12-24T09:00:00Z")
    assert "becomes active at 2026-12-24 09:00 UTC" in text


def test_no_activation_date_keeps_the_key_in_pre_activation(alice: Any, clock: Any) -> None:
    assert "stays in pre-activation" in describe_generation(alice, activate_at=None)


@pytest.mark.parametrize(
    "when", ["2026-02-30T09:00:00Z", "2026-12-24T09:00:00+99:00", "9999-12-31T23:59:59-23:59", "soon"]
)
def test_an_impossible_activation_date_is_a_clear_error(alice: Any, clock: Any, when: str) -> None:
    with pytest.raises(ApplicationError) as excinfo:
        describe_generation(alice, activate_at=when)
    assert "activate_at" in excinfo.value.details


def test_a_policy_change_names_each_setting_with_its_old_and_new_value(olivia: Any, clock: Any) -> None:
    req = open_request(
        operation="policy_change",
        requester=olivia,
        justification="shorter wait, and security officers may approve generation",
        parameters={
            "name": "standard",
            "destruction_wait_days": 14,
            "quorum": {"generate": {"approver_roles": ["custodian", "security_officer"]}},
        },
    )
    text = registry.get("policy_change").describe(req)
    assert "destruction_wait_days 30 → 14" in text
    assert "quorum.generate.approver_roles custodian → custodian, security_officer" in text
    assert "auto_rotate" not in text  # unchanged settings are not listed
