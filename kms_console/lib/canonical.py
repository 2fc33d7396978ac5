"""Canonical JSON: the one byte form that digests and hash chains are computed over."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from decimal import Decimal
from typing import Any


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return isoformat(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not allowed in canonical JSON")


def isoformat(value: dt.datetime) -> str:
    """UTC, microseconds always present, so the text is the same before and after a database round trip."""
    if value.tzinfo is None:
        raise ValueError("naive datetimes are not allowed in canonical JSON")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> str:
    """Sorted keys, no insignificant whitespace, UTF-8 text (RFC 8785 in spirit for our value types)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def sha256_hex(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()
