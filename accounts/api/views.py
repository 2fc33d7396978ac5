"""The tokens API: every user manages their own API tokens (also users without a role)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import services
from accounts.authentication import token_scopes
from accounts.models import ApiToken
from kms_console.lib.errors import ApplicationError, Forbidden, NotFound

from .base import ApiViewSet, uuid_or_404
from .serializers import TokenCreatedSerializer, TokenCreateSerializer, TokenSerializer


def _bounded_by_caller(request: Request, scopes: list[str] | None, days: int | None) -> tuple[list[str], int | None]:
    """A token may mint tokens only within its own powers: no scope it lacks, no later expiry.

    Without this, a leaked read-only token could mint itself an approve token, or a short-lived
    one an everlasting one. Console sessions (OTP-verified) are not bounded.
    """
    own = token_scopes(request)
    scopes = sorted(set(scopes)) if scopes else sorted(own)
    extra = set(scopes) - own
    if extra:
        raise Forbidden(
            f"A token cannot create a token with more scopes than it has (not: {', '.join(sorted(extra))}).",
            code="scope_required",
        )
    caller = request.auth
    if isinstance(caller, ApiToken) and caller.expires_at is not None:
        remaining = caller.expires_at - timezone.now()
        if days is None:
            days = remaining.days
            if days < 1:
                raise ApplicationError(
                    "Your token expires within a day: create new tokens from the console or with kms_token.",
                    code="invalid_expiry",
                    details={"expires_in_days": ["Your own token expires too soon."]},
                )
        elif dt.timedelta(days=days) > remaining:
            raise ApplicationError(
                f"A token cannot outlive the token that creates it (at most {remaining.days} days).",
                code="invalid_expiry",
                details={"expires_in_days": [f"At most {remaining.days}."]},
            )
    return scopes, days


class TokenViewSet(mixins.ListModelMixin, ApiViewSet):
    """The caller's own API tokens. Any authenticated user may list, create and revoke their own."""

    serializer_class = TokenSerializer
    default_roles = None  # own tokens: also users without a role
    # Any credentials may manage their own tokens; `_bounded_by_caller` keeps a token within its powers.
    action_scopes = {"list": "", "create": "", "destroy": ""}

    def get_queryset(self) -> QuerySet[ApiToken]:
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular inspecting the view
            return ApiToken.objects.none()
        return ApiToken.objects.filter(user=self.request.user).order_by("-created_at", "id")

    @extend_schema(summary="List your API tokens (never the tokens themselves)")
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(
        summary="Create an API token; the answer shows the raw token once",
        request=TokenCreateSerializer,
        responses={201: TokenCreatedSerializer},
    )
    def create(self, request: Request) -> Response:
        data = TokenCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        scopes, days = _bounded_by_caller(
            request, data.validated_data.get("scopes"), data.validated_data.get("expires_in_days")
        )
        token, raw = services.create_token(
            user=request.user,
            scopes=scopes,
            expires_in_days=days,
            name=data.validated_data["name"],
            actor=request.user,
            parent=request.auth if isinstance(request.auth, ApiToken) else None,
        )
        # The raw token travels in this one answer and nowhere else (only its hash is stored).
        return Response({**TokenSerializer(token).data, "token": raw}, status=status.HTTP_201_CREATED)

    @extend_schema(summary="Revoke one of your API tokens", request=None, responses={204: None})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        token = self.get_queryset().filter(pk=uuid_or_404(pk, "token")).first()
        if token is None:
            raise NotFound("No such token.")
        services.revoke_token(token=token, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
