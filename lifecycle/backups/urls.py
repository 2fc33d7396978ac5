"""Console pages for backups, escrow shares and restores, mounted at /backups/."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver

app_name = "backups"
urlpatterns: list[URLPattern | URLResolver] = []
