"""Issue 5, items 1-2: the one recording call and the hash chain it extends."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from audit import context, services
from audit.chain import chain_hash, payload_of
from audit.models import GENESIS_HASH, AuditEvent, ChainHead
from kms_console.lib.canonical import canonical_json
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def test_events_get_contiguous_numbers_and_each_links_to_the_one_before(clock: Any) -> None:
    first = services.record("test.one")
    second = services.record("test.two", target_type="key", target_id="k-1", details={"b": 2, "a": [1, 2]})
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    head = ChainHead.objects.get(pk=1)
    assert (head.seq, head.hash) == (2, second.hash)


def test_the_hash_is_sha256_over_the_previous_hash_and_the_canonical_event(clock: Any) -> None:
    event = services.record("test.hashed", target_type="key", target_id=42, details={"z": 1, "a": "ü"})
    stored = AuditEvent.objects.get(seq=event.seq)
    text = (
        '{"action":"test.hashed","actor":"system","actor_id":null,"at":"2026-12-04T09:00:00.000000Z",'
        '"details":{"a":"ü","z":1},"seq":1,"source":"","target_id":"42","target_type":"key","via":"system"}'
    )
    assert canonical_json(payload_of(stored)) == text
    assert stored.hash == hashlib.sha256(f"{GENESIS_HASH}\n{text}".encode()).hexdigest()
    assert chain_hash(stored.prev_hash, payload_of(stored)) == stored.hash


def test_the_actor_channel_and_address_come_from_the_context() -> None:
    bob = make_user("bob")
    with context.acting(bob, via="web", source="192.0.2.7"):
        event = services.record("test.context")
    assert (event.actor, event.actor_id, event.via, event.source) == ("bob", bob.pk, "web", "192.0.2.7")
    # Outside any request, task or command it is the system.
    event = services.record("test.nobody")
    assert (event.actor, event.actor_id, event.via, event.source) == ("system", None, "system", "")


def test_an_explicit_actor_wins_over_the_context() -> None:
    bob, carol = make_user("bob"), make_user("carol")
    with context.acting(bob, via="api", source="198.51.100.1"):
        event = services.record("test.explicit", actor=carol)
    assert (event.actor, event.via, event.source) == ("carol", "api", "198.51.100.1")


def test_details_are_stored_as_the_json_that_was_hashed() -> None:
    event = services.record("test.json", details={"tuple": (1, 2), "nested": {"b": None, "a": True}})
    stored = AuditEvent.objects.get(seq=event.seq)
    assert stored.details == {"tuple": [1, 2], "nested": {"a": True, "b": None}}
    assert chain_hash(stored.prev_hash, payload_of(stored)) == stored.hash


@pytest.mark.parametrize(
    "details",
    [
        {"pin": "1234"},
        {"password": "x"},
        {"OTP": "123456"},
        {"token": "kms_abc"},
        {"hsm_pin": "1234"},
        {"new_password": "x"},
        {"client_secret": "x"},
        {"refresh_token": "x"},
        {"outer": {"plaintext": "x"}},
        {"list": [{"private_key": "x"}]},
        {"blob": b"\x00\x01"},
        {"nested": [b"bytes"]},
        {1: "not a text key"},
    ],
)
def test_secret_looking_details_are_refused_and_nothing_is_written(details: dict[str, Any]) -> None:
    with pytest.raises(services.AuditDetailError):
        services.record("test.secret", details=details)
    assert not AuditEvent.objects.exists()


def test_details_must_be_small() -> None:
    with pytest.raises(services.AuditDetailError, match="larger than"):
        services.record("test.big", details={"text": "x" * (services.MAX_DETAILS_BYTES + 1)})
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize(
    "fields",
    [{"action": "a" * 65}, {"action": "ok", "target_type": "t" * 33}, {"action": "ok", "target_id": "i" * 65}],
)
def test_overlong_fields_are_refused_rather_than_cut(fields: dict[str, Any]) -> None:
    action = fields.pop("action")
    with pytest.raises(services.AuditDetailError, match="longer than"):
        services.record(action, **fields)
    assert not AuditEvent.objects.exists()


def test_harmless_keys_that_merely_contain_a_word_are_allowed() -> None:
    event = services.record("test.names", details={"pin_env": "KMS_HSM_PIN", "token_prefix": "kms_abcd", "otp_ok": 1})
    assert event.details["pin_env"] == "KMS_HSM_PIN"


def test_a_user_named_outside_any_request_does_not_stick_to_later_events() -> None:
    """Authentication outside a request (a unit test, a script) must not credit later system work."""
    bob = make_user("bob")
    context.set_user(bob)
    assert services.record("test.after_stray_login").actor == "system"
    # Inside a request's scope it applies, and ends with the scope.
    with context.acting(None, via="api", source="192.0.2.1"):
        context.set_user(bob)
        assert services.record("test.in_request").actor == "bob"
    assert services.record("test.after_request").actor == "system"
