"""Console pages of the audit app, mounted at /audit/ by kms_console/urls.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from . import views

app_name = "audit"
urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.event_list, name="event_list"),
    path("verify/", views.verify, name="verify"),
]
