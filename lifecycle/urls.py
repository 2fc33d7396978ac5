"""Console pages of the lifecycle app, mounted by kms_console/urls.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver

app_name = "lifecycle"
urlpatterns: list[URLPattern | URLResolver] = []
