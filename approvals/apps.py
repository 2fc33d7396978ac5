from __future__ import annotations

from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Dual control"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import registry, reviews

        registry.register(reviews.REVIEW)
