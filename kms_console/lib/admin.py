"""The Django admin as a read-only window onto the console's records.

Every write of the console goes through a service that checks roles, dual control and writes its
audit event (rules 2 and 3). The admin bypasses all of that, so no model may be added, changed or
deleted through it - not by a superuser either. It stays useful for looking things up; fields that
hold secrets or wrapped key material are never shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.apps import apps
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpRequest

# Fields never displayed, whatever the model: password hashes, wrapped key material, sealed shares.
HIDDEN_EVERYWHERE = frozenset(
    {"password", "wrapped", "wrapped_kek", "wrapped_key", "sealed", "encrypted_transport_key", "secret"}
)


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """View only: no add, change or delete permission for anybody, and no bulk actions."""

    actions = None
    hidden_fields: tuple[str, ...] = ()

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # Defence in depth: even if a permission check above were bypassed, nothing is written.
    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        raise PermissionDenied("The admin is read-only: use the console's services.")

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        raise PermissionDenied("The admin is read-only: use the console's services.")

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        raise PermissionDenied("The admin is read-only: use the console's services.")

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        raise PermissionDenied("The admin is read-only: use the console's services.")

    def _hidden(self) -> set[str]:
        return set(self.hidden_fields) | HIDDEN_EVERYWHERE

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        hidden = self._hidden()
        return [
            field.name
            for field in self.model._meta.get_fields()
            if field.concrete and not field.auto_created and field.name not in hidden
        ] + [field.name for field in self.model._meta.many_to_many if field.name not in hidden]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.get_fields(request, obj)

    def get_list_display(self, request: HttpRequest) -> list[str]:
        shown = [
            field.name
            for field in self.model._meta.concrete_fields
            if field.name not in self._hidden() and not isinstance(field, models.JSONField | models.TextField)
        ]
        return ["__str__", *shown[:6]]


def read_only_admin(model: type[models.Model], hidden: Iterable[str] = ()) -> type[ReadOnlyModelAdmin]:
    return type(f"{model.__name__}ReadOnlyAdmin", (ReadOnlyModelAdmin,), {"hidden_fields": tuple(hidden)})


def register_read_only(
    models_to_register: Iterable[type[models.Model]],
    *,
    hidden: Mapping[str, Iterable[str]] | None = None,
    site: admin.AdminSite = admin.site,
) -> None:
    """Register (or re-register, replacing a writable admin) each model read-only.

    `hidden` maps a model's `model_name` to further fields that must never be displayed.
    """
    hidden = hidden or {}
    for model in models_to_register:
        if site.is_registered(model):
            site.unregister(model)
        site.register(model, read_only_admin(model, hidden.get(model._meta.model_name, ())))


def register_app_read_only(
    app_label: str, *, hidden: Mapping[str, Iterable[str]] | None = None, site: admin.AdminSite = admin.site
) -> None:
    """Every model of the app, read-only: a model added later is covered without touching its admin.py."""
    register_read_only(apps.get_app_config(app_label).get_models(), hidden=hidden, site=site)
