"""REST routes of the accounts app, mounted under /api/v1/ by kms_console/api_urls.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver
from rest_framework.routers import SimpleRouter

from . import schema  # noqa: F401  (registers the authentication schemes with drf-spectacular)
from .views import TokenViewSet

router = SimpleRouter()
router.register("tokens", TokenViewSet, basename="token")

urlpatterns: list[URLPattern | URLResolver] = [*router.urls]
