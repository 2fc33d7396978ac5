"""Base classes and small helpers shared by every app's API views."""

from __future__ import annotations

import uuid
from typing import Any

from rest_framework import viewsets

from kms_console.lib.errors import NotFound
from kms_console.lib.openapi import ApiAutoSchema

from .permissions import ApiAccessMixin, ScopeAndRole


class ApiViewSet(ApiAccessMixin, viewsets.GenericViewSet):
    """A viewset with the API's permission rules and error-documenting schema.

    Subclasses add the mixins they need (list, retrieve) and `@action`s that validate a small
    input serializer and call one service. Views hold no business logic.
    """

    permission_classes = [ScopeAndRole]
    schema = ApiAutoSchema()


def uuid_or_404(value: Any, what: str = "object") -> uuid.UUID:
    """Parse an id from the path: a malformed UUID names nothing, so it is a 404 like an unknown one."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"No such {what}.") from None
