"""The API's JSON parser: DRF's, hardened so that no request body can turn into a 5xx.

DRF's parser turns only ValueError into a 400. A body nested deeply enough makes the json module
raise RecursionError (a 500), and a huge body is read whole into memory. This one refuses bodies
larger than DATA_UPLOAD_MAX_MEMORY_SIZE (413) and any body the json module cannot take (400).
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from django.conf import settings
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "too_large"


class SafeJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if stream is not None and limit is not None:
            # Read at most one byte past the limit, whatever Content-Length claims.
            body = stream.read(limit + 1)
            if len(body) > limit:
                raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
            stream = BytesIO(body)
        try:
            data = super().parse(stream, media_type, parser_context)
        except (RecursionError, UnicodeDecodeError) as exc:
            raise exceptions.ParseError(f"JSON parse error - {type(exc).__name__}") from None
        if _holds_nul(data):
            # PostgreSQL cannot store or compare text with U+0000: refuse it here, not with a 500.
            raise exceptions.ValidationError(
                {"non_field_errors": ["A text value holds a NUL character (\\u0000), which no field accepts."]}
            )
        return data


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False
