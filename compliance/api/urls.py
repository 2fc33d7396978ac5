"""REST routes of the compliance app, mounted under /api/v1/ by kms_console/api_urls.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from . import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("compliance/frameworks/", views.FrameworkListView.as_view(), name="compliance-frameworks"),
    path("compliance/controls/", views.ControlListView.as_view(), name="compliance-controls"),
    path("compliance/checks/", views.CheckListView.as_view(), name="compliance-checks"),
    path("compliance/checks/<str:check_id>/", views.CheckDetailView.as_view(), name="compliance-check"),
    path("compliance/report/", views.ReportView.as_view(), name="compliance-report"),
    path("compliance/audit-review/", views.AuditReviewView.as_view(), name="compliance-audit-review"),
]
