from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts, roles and second factors"
    default_auto_field = "django.db.models.BigAutoField"
