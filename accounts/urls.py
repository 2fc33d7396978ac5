"""Console pages of the accounts app (sign-in steps), mounted at /accounts/ by kms_console/urls.py.

The names are fixed: accounts.middleware redirects to accounts:login, :otp, :enrol and :acknowledge.
"""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from . import views

app_name = "accounts"
urlpatterns: list[URLPattern | URLResolver] = [
    path("login/", views.login_view, name="login"),
    path("otp/", views.otp_view, name="otp"),
    path("enrol/", views.enrol_view, name="enrol"),
    path("acknowledge/", views.acknowledge_view, name="acknowledge"),
    path("logout/", views.logout_view, name="logout"),
]
