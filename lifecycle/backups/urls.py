"""Console pages for backups, escrow shares and restores, mounted at /backups/."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from . import views

app_name = "backups"
urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.index, name="index"),
    path("escrow/new/", views.escrow_new, name="escrow_new"),
    path("escrow/<uuid:ceremony_id>/", views.ceremony_detail, name="ceremony"),
    path("escrow/<uuid:ceremony_id>/shares/<int:index>/", views.share_retrieve, name="share_retrieve"),
    path("keys/<uuid:key_id>/backup/", views.backup_new, name="backup_new"),
    path("keys/<uuid:key_id>/export/", views.export_new, name="export_new"),
    path("restores/<uuid:restore_id>/", views.restore_detail, name="restore"),
    path("import-key/", views.import_key, name="import_key"),
    path("<uuid:backup_id>/restore/", views.restore_new, name="restore_new"),
]
