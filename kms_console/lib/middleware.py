from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

from .errors import ExternalError, error_body


class SecurityHeadersMiddleware:
    """Content-Security-Policy and the headers Django 5.2 does not set itself."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        policy = settings.KMS_CONTENT_SECURITY_POLICY
        if request.path.startswith("/api/docs/"):
            # Swagger UI sets style attributes from its scripts; scripts stay same-origin only.
            policy = policy.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
        response.headers.setdefault("Content-Security-Policy", policy)
        response.headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()")
        if request.user.is_authenticated if hasattr(request, "user") else False:
            # Pages of a logged-in user hold key metadata: keep them out of shared caches.
            response.headers.setdefault("Cache-Control", "no-store")
        return response


class RejectNulMiddleware:
    """Refuse a NUL character in the path (404: such a name names nothing) and, for the API, in the
    query or a form body (400).

    PostgreSQL cannot store or even compare text holding U+0000, so such a value reaching an ORM
    lookup would answer 500. JSON bodies are checked by kms_console.lib.parsers.SafeJSONParser.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path:
            return self._refuse(request, 404, "not_found", "Not found.")
        # Console forms explain a NUL next to the field (their own validation); the API refuses here.
        fields = self._fields_with_nul(request) if request.path.startswith("/api/") else []
        if fields:
            return JsonResponse(
                error_body(
                    "invalid",
                    f"{fields[0]}: a NUL character is not allowed in any field.",
                    {name: ["A NUL character is not allowed."] for name in fields},
                ),
                status=400,
            )
        return self.get_response(request)

    @staticmethod
    def _refuse(request: HttpRequest, status: int, code: str, message: str) -> HttpResponse:
        if request.path.startswith("/api/"):
            return JsonResponse(error_body(code, message), status=status)
        return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")

    @staticmethod
    def _fields_with_nul(request: HttpRequest) -> list[str]:
        """Names of the query (and form) parameters holding a NUL character."""
        pairs = list(request.GET.lists())
        if request.method == "POST" and request.content_type in {
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        }:
            pairs += list(request.POST.lists())
        names = [name for name, values in pairs if "\x00" in name or any("\x00" in value for value in values)]
        return [name.replace("\x00", "\ufffd") for name in names]


class ExternalErrorMiddleware:
    """An HSM failure that escapes a console view becomes a 503 page that says so, not a 500."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, ExternalError):
            return None
        if request.path.startswith("/api/"):
            return JsonResponse(error_body(exception.code, exception.message), status=exception.status_code)
        title = "The HSM refused the data" if exception.status_code == 400 else "The HSM is not available"
        html = render_to_string("503.html", {"title": title, "message": exception.message}, request=request)
        return HttpResponse(html, status=exception.status_code)
