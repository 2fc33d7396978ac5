"""REST routes of the lifecycle app, mounted under /api/v1/ by kms_console/api_urls.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, include, path
from rest_framework.routers import SimpleRouter

from .keys import KeyViewSet
from .views import CustodianViewSet, HsmViewSet, JobViewSet, PolicyViewSet

router = SimpleRouter()
router.register("keys", KeyViewSet, basename="key")
router.register("jobs", JobViewSet, basename="job")
router.register("hsms", HsmViewSet, basename="hsm")
router.register("policies", PolicyViewSet, basename="policy")
router.register("custodians", CustodianViewSet, basename="custodian")

urlpatterns: list[URLPattern | URLResolver] = [*router.urls, path("", include("lifecycle.backups.api"))]
