"""The API's error shape in the OpenAPI document, and the schema class that documents it everywhere.

Kept apart from `errors.py` on purpose: services import `errors`, and importing DRF's view machinery
from there would pull the authentication classes (and with them the services) into a circle.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="A stable, machine-readable reason, e.g. not_found, digest_mismatch.")
    message = serializers.CharField(help_text="What went wrong, in words a person can act on.")
    details = serializers.DictField(
        child=serializers.JSONField(),
        help_text="Per-field messages for invalid input ({field: [messages]}), or other context.",
    )


class ErrorSerializer(serializers.Serializer):
    """The body of every 4xx (and 503) answer of the API: {"error": {"code", "message", "details"}}."""

    error = ErrorDetailSerializer()


class ApiAutoSchema(AutoSchema):
    """drf-spectacular's schema plus the error answers an endpoint can give, all in the one shape.

    Views opt in with `schema = ApiAutoSchema()` (the API base views do). 401/403/429 can happen
    anywhere; 404 where the path names an object; 400 where a body or query filters are read; 409
    where a state or quorum rule can refuse a write.
    """

    def _error_codes(self) -> list[str]:
        codes = {"401", "403", "429"}
        if "{" in self.path:
            codes.add("404")
        if self.method in {"POST", "PUT", "PATCH"}:
            codes |= {"400", "409"}
        elif self.method == "GET" and (self._is_list_view() or getattr(self.view, "filterset_class", None)):
            codes.add("400")
        return sorted(codes)

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        for code in self._error_codes():
            if code not in responses:
                responses[code] = self._get_response_for_code(ErrorSerializer, code, direction=direction)
        return responses
