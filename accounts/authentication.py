"""DRF authentication: API tokens (`Authorization: Token …`) and OTP-verified console sessions."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from audit import context

from . import services
from .models import ApiToken


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Token <token>'.")
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("The token holds characters a token never has.") from None
        token = services.authenticate_token(raw)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")
        context.set_user(token.user)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class OtpSessionAuthentication(authentication.SessionAuthentication):
    """The console's session, accepted only once its second factor was verified."""

    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        result = super().authenticate(request)
        if result is None:
            return None
        user = result[0]
        django_user = request._request.user
        needs_otp = services.is_privileged(user) or services.has_confirmed_device(user)
        if needs_otp and not (hasattr(django_user, "is_verified") and django_user.is_verified()):
            return None
        return result


def token_scopes(request: Request) -> set[str]:
    """Scopes of the request's credentials. Console sessions carry every scope (roles still apply)."""
    auth = getattr(request, "auth", None)
    if isinstance(auth, ApiToken):
        return set(auth.scopes)
    return set(ApiToken.Scope.values)
