from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from . import context


def client_address(request: HttpRequest) -> str:
    # REMOTE_ADDR only: X-Forwarded-For is client-controlled unless a trusted proxy rewrites it,
    # and deployments behind one set REMOTE_ADDR there.
    return request.META.get("REMOTE_ADDR", "")[:64]


class AuditContextMiddleware:
    """Puts the request's user, channel and address into the audit context for the services."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        via = "api" if request.path.startswith("/api/") else "web"
        user = request.user if getattr(request, "user", None) and request.user.is_authenticated else None
        with context.acting(user, via=via, source=client_address(request)):
            return self.get_response(request)
