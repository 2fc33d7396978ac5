"""Console pages of the accounts app, mounted by kms_console/urls.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver

app_name = "accounts"
urlpatterns: list[URLPattern | URLResolver] = []
