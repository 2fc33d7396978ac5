"""Console pages of the compliance app, mounted at /compliance/ by kms_console/urls.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from . import views

app_name = "compliance"
urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.index, name="index"),
    path("checks/<slug:check_id>/", views.check_detail, name="check"),
    path("audit-review/", views.audit_review, name="audit_review"),
    path("<slug:slug>/", views.framework_detail, name="framework"),
    path("<slug:slug>/report/<slug:fmt>/", views.report_download, name="report"),
    path("<slug:slug>/controls/<str:control_id>/", views.control_detail, name="control"),
]
