"""Console pages of the audit app, mounted by kms_console/urls.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver

app_name = "audit"
urlpatterns: list[URLPattern | URLResolver] = []
