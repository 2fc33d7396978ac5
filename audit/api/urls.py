"""REST routes of the audit app, mounted under /api/v1/ by kms_console/api_urls.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path
from rest_framework.routers import SimpleRouter

from .views import AuditEventViewSet, AuditVerifyView, CheckpointViewSet

router = SimpleRouter()
router.register("audit/events", AuditEventViewSet, basename="audit-event")
router.register("audit/checkpoints", CheckpointViewSet, basename="audit-checkpoint")

urlpatterns: list[URLPattern | URLResolver] = [
    path("audit/verify/", AuditVerifyView.as_view(), name="audit-verify"),
    *router.urls,
]
