"""The Celery application: JSON only, late acks, configuration from Django settings (CELERY_*)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kms_console.settings")

app = Celery("kms_console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
