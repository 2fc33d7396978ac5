"""Helpers shared by the backup services: base64 of blobs, and which version of a key a request names."""

from __future__ import annotations

import base64
from typing import Any

from kms_console.lib.errors import ApplicationError, Conflict

from ..models import Key, KeyVersion


def b64(data: bytes) -> str:
    """Blobs (wrapped keys, sealed shares) are stored and passed around as base64 text."""
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    """The bytes of a stored blob; raises ValueError (binascii.Error) if it is not strict base64."""
    return base64.b64decode(text, validate=True)


def version_of(key: Key, number: Any) -> KeyVersion:
    """Version `number` of the key (the primary one when number is None)."""
    if number is None:
        if key.primary_version is None:
            raise Conflict(f"Key {key.name} has no version yet.", code="no_version")
        return key.primary_version
    if isinstance(number, bool) or not isinstance(number, int):
        raise ApplicationError("version: must be a version number", code="invalid", details={"version": ["Invalid."]})
    version = key.versions.filter(number=number).first()
    if version is None:
        raise ApplicationError(
            f"version: key {key.name} has no version {number}",
            code="invalid",
            details={"version": ["No such version."]},
        )
    return version
