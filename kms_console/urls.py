from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django_otp.admin import OTPAdminSite
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

# The read-only admin asks for the second factor too (django-otp's admin site: a verified device).
admin.site.__class__ = OTPAdminSite

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("kms_console.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("accounts/", include("accounts.urls")),
    path("audit/", include("audit.urls")),
    path("compliance/", include("compliance.urls")),
    path("backups/", include("lifecycle.backups.urls")),
    path("", include("approvals.urls")),
    path("", include("lifecycle.urls")),
]

# Unrouted URLs under /api/ answer in the API's JSON error shape; console pages keep Django's page.
handler404 = "kms_console.lib.errors.handler404"
