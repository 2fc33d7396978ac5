"""REST routes of the approvals app, mounted under /api/v1/ by kms_console/api_urls.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver
from rest_framework.routers import SimpleRouter

from .views import RequestViewSet

router = SimpleRouter()
router.register("requests", RequestViewSet, basename="request")

urlpatterns: list[URLPattern | URLResolver] = [*router.urls]
