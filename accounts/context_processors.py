from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from . import services


def roles(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    user_roles = services.roles_of(user) if user is not None else set()
    return {"user_roles": user_roles}
