"""One application error, and the one JSON error shape the API answers with.

Services raise ApplicationError (or a subclass) with a readable message; the API maps it, DRF's own
exceptions and Django's to {"error": {"code", "message", "details"}} with a 4xx status. Messages
must never contain secrets: they are shown to users and written to job rows.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ApplicationError(Exception):
    """A refusal or failure that the caller should see, in words."""

    status_code = status.HTTP_400_BAD_REQUEST
    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details or {}


class NotFound(ApplicationError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class Forbidden(ApplicationError):
    status_code = status.HTTP_403_FORBIDDEN
    code = "forbidden"


class Conflict(ApplicationError):
    """The object is not in a state that allows this (a state machine or quorum rule says no)."""

    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


class ServiceUnavailable(ApplicationError):
    """A back end (the HSM) cannot serve the request now; nothing the client sent caused it."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "unavailable"


class ExternalError(Exception):
    """A failure of something outside the console's code (the HSM): never the client's fault, unless
    a subclass says so through its status. `lifecycle.hsm.HsmError` derives from it, so an HSM
    failure that escapes a view answers 503 (400 for data that does not check out), not 500."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "hsm_unavailable"
    message = "The HSM could not do this now."


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _first_message(detail: Any) -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            text = _first_message(value)
            return text if key in {"non_field_errors", "detail"} else f"{key}: {text}"
        return "Invalid input."
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return str(detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status_code)
    if isinstance(exc, ExternalError):
        return Response(error_body(exc.code, exc.message), status=exc.status_code)
    if isinstance(exc, RequestDataTooBig):
        return Response(
            error_body("too_large", "The request body is larger than this server accepts."),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, SuspiciousOperation):
        return Response(error_body("bad_request", "The request was refused as malformed."), status=400)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    elif isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = drf_exceptions.ValidationError(detail)
    if not isinstance(exc, drf_exceptions.APIException):
        return None  # a real bug: let Django log it and answer 500
    headers: dict[str, str] = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))
    if isinstance(exc, drf_exceptions.ValidationError):
        details = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        body = error_body("invalid", _first_message(exc.detail), details)
    else:
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        body = error_body(str(code), str(exc.detail))
    return Response(body, status=exc.status_code, headers=headers)


# --- Django-level errors under /api/ --------------------------------------------------------------


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    """URLs nobody routes: the API answers in its JSON error shape, the console with its page."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("not_found", "There is no such endpoint or object."), status=404)
    return defaults.page_not_found(request, exception)
