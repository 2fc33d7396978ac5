"""Console pages of the approvals app, mounted by kms_console/urls.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver

app_name = "approvals"
urlpatterns: list[URLPattern | URLResolver] = []
