"""The REST API under /api/v1/: one router module per app."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    path("", include("lifecycle.api.urls")),
    path("", include("approvals.api.urls")),
    path("", include("audit.api.urls")),
    path("", include("compliance.api.urls")),
    path("", include("accounts.api.urls")),
]
