"""Console pages of the lifecycle app, mounted at the site root by kms_console/urls.py."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from . import views

app_name = "lifecycle"
urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.dashboard, name="dashboard"),
    path("keys/", views.key_list, name="key_list"),
    path("keys/new/", views.key_generate, name="key_generate"),
    path("keys/<uuid:key_id>/", views.key_detail, name="key_detail"),
    path("keys/<uuid:key_id>/request/<slug:operation>/", views.key_operation, name="key_operation"),
    path("policies/", views.policy_list, name="policy_list"),
    path("policies/new/", views.policy_propose, name="policy_new"),
    path("policies/<str:name>/", views.policy_detail, name="policy_detail"),
    path("policies/<str:name>/propose/", views.policy_propose, name="policy_propose"),
    path("custodians/", views.custodian_list, name="custodian_list"),
    path("custodians/<str:username>/roles/", views.custodian_roles, name="custodian_roles"),
    path("hsms/", views.hsm_list, name="hsm_list"),
    path("hsms/register/", views.hsm_register, name="hsm_register"),
    path("hsms/<str:name>/retire/", views.hsm_retire, name="hsm_retire"),
    path("jobs/", views.job_list, name="job_list"),
    path("jobs/status/", views.job_status, name="job_status"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job_detail"),
]
