from __future__ import annotations

from django.apps import AppConfig


class LifecycleConfig(AppConfig):
    name = "lifecycle"
    verbose_name = "Key lifecycle"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import actions, admin_actions
        from .services import steps

        actions.register_all()
        admin_actions.register_all()
        steps.register()

        from .backups import actions as backup_actions
        from .backups import jobs as backup_jobs

        backup_actions.register_all()
        backup_jobs.register()
