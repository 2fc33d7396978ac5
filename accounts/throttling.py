from __future__ import annotations

from typing import Any

from rest_framework.throttling import SimpleRateThrottle

from .models import ApiToken


class TokenRateThrottle(SimpleRateThrottle):
    """Per-token request rate (KMS_API_RATE); sessions by user, anonymous callers by address."""

    scope = "token"

    def get_cache_key(self, request: Any, view: Any) -> str:
        if isinstance(getattr(request, "auth", None), ApiToken):
            ident = f"token:{request.auth.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"addr:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
