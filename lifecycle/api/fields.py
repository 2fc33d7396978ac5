"""Serializer fields of the key-use API."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers


@extend_schema_field(OpenApiTypes.BYTE)
class Base64Field(serializers.Field):
    """Bytes sent and answered as standard base64 (RFC 4648 §4, with padding), strictly decoded.

    The cap applies to the decoded bytes and is checked on the text first, so a huge string is
    refused before it is decoded.
    """

    default_error_messages = {
        "invalid": "Must be standard base64 text (A-Z, a-z, 0-9, +, / and = padding).",
        "too_large": "At most {max_bytes} bytes once decoded.",
        "blank": "May not be empty.",
    }

    def __init__(self, *, max_bytes: int, allow_empty: bool = True, **kwargs: Any) -> None:
        self.max_bytes = max_bytes
        self.allow_empty = allow_empty
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> bytes:
        if not isinstance(data, str):
            self.fail("invalid")
        # 4 base64 characters carry 3 bytes; anything longer cannot decode to max_bytes or fewer.
        if len(data) > 4 * ((self.max_bytes + 2) // 3):
            self.fail("too_large", max_bytes=self.max_bytes)
        try:
            value = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            self.fail("invalid")
        if len(value) > self.max_bytes:
            self.fail("too_large", max_bytes=self.max_bytes)
        if not value and not self.allow_empty:
            self.fail("blank")
        return value

    def to_representation(self, value: bytes) -> str:
        return base64.b64encode(value).decode("ascii")
