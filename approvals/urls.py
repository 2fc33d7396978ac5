"""Console pages of the approvals app, mounted at the site root by kms_console/urls.py.

`/requests/<id>/` is also the link in the approvers' notification emails (approvals.services).
"""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from . import views

app_name = "approvals"
urlpatterns: list[URLPattern | URLResolver] = [
    path("requests/", views.request_list, name="request_list"),
    path("requests/new/", views.request_new, name="request_new"),
    path("requests/<uuid:request_id>/", views.request_detail, name="request_detail"),
    path("requests/<uuid:request_id>/decide/", views.request_decide, name="request_decide"),
    path("requests/<uuid:request_id>/cancel/", views.request_cancel, name="request_cancel"),
    path("requests/<uuid:request_id>/retry/", views.request_retry, name="request_retry"),
]
