"""Template helpers of the console: `{% load console %}`.

Tags:     {% nav_link "lifecycle:key_list" "Keys" %}  (a URL name or a literal path such as "/backups/")
          {% waiting_count as n %}                    (requests waiting for the signed-in user's decision)
Filters:  {{ value|state_label }}   pre_activation -> "Pre-activation" (key, request and job states)
          {{ value|badge }}         a state as a coloured badge with its words inside
          {{ op|op_title }}         "schedule_destruction" -> "Schedule destruction" (from the registry)
          {{ role|role_label }}     "key_admin" -> "Key administrator"
          {{ when|utc }}            "2026-12-04 09:00 UTC", or an em dash for no date
          {{ when|utc_short }}      "2026-12-04 09:00" (in columns whose header says UTC)
          {{ a_set|sorted_list }}   a sorted list (sets of roles)
          {{ key.usage|usage_label }} "encrypt_decrypt" -> "Encrypt/decrypt"
          {{ op|immediate_name }}    "suspend" -> "suspension" (the steps reviewed after the fact)
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import template
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from approvals import registry
from approvals.models import Decision, RequestState
from approvals.selectors import requests_waiting_for
from kms_console.lib.errors import ApplicationError
from kms_console.lib.roles import Role

from ..models import JobStatus
from ..selectors import IMMEDIATE_NAMES
from ..states import KeyState

register = template.Library()

_LABELS: dict[str, str] = {
    **dict(Decision.Kind.choices),
    **dict(KeyState.choices),
    **dict(RequestState.choices),
    **dict(JobStatus.choices),
}


@register.simple_tag(takes_context=True)
def nav_link(context: template.Context, target: str, label: str, count: int | None = None) -> SafeString:
    """A top-bar link, marked current when the page lies under it."""
    if target.startswith("/"):
        url = target
    else:
        try:
            url = reverse(target)
        except NoReverseMatch:
            return SafeString("")
    request = context.get("request")
    path = getattr(request, "path", "")
    current = path == url if url == "/" else path.startswith(url)
    if count:
        return format_html(
            '<a href="{}"{}>{}<span class="nav-count" title="{} waiting for you">{}</span></a>',
            url,
            SafeString(' class="current" aria-current="page"') if current else "",
            label,
            count,
            count,
        )
    return format_html(
        '<a href="{}"{}>{}</a>', url, SafeString(' class="current" aria-current="page"') if current else "", label
    )


@register.simple_tag(takes_context=True)
def waiting_count(context: template.Context) -> int:
    """How many pending requests wait for the signed-in user's decision (0 for everyone else)."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return 0
    cached = getattr(request, "_kms_waiting_count", None)
    if cached is None:
        cached = requests_waiting_for(user).count()
        request._kms_waiting_count = cached
    return cached


@register.filter
def state_label(value: Any) -> str:
    text = str(value or "")
    return _LABELS.get(text, text.replace("_", " ").capitalize())


@register.filter
def badge(value: Any) -> SafeString:
    text = str(value or "")
    return format_html('<span class="badge badge-{}">{}</span>', text, state_label(text))


@register.filter
def op_title(operation: Any) -> str:
    try:
        return registry.get(str(operation)).title
    except ApplicationError:
        return str(operation).replace("_", " ").capitalize()


@register.filter
def immediate_name(operation: Any) -> str:
    """An immediate step as a noun, for "the review of the immediate suspension"."""
    text = str(operation or "")
    return IMMEDIATE_NAMES.get(text, op_title(text).lower())


@register.filter
def role_label(role: Any) -> str:
    try:
        return Role(str(role)).label
    except ValueError:
        return str(role)


USAGE_LABELS = {
    "encrypt_decrypt": "Encrypt/decrypt",
    "sign_verify": "Sign/verify",
    "wrap_unwrap": "Wrap/unwrap keys",
    "mac": "MAC",
}


@register.filter
def usage_label(value: Any) -> str:
    return USAGE_LABELS.get(str(value), str(value).replace("_", " "))


@register.filter
def sorted_list(values: Any) -> list[Any]:
    return sorted(values or ())


@register.filter
def utc_short(value: Any) -> str:
    """A date and time without the zone, for table columns whose header says UTC."""
    text = utc(value)
    return text.removesuffix(" UTC")


@register.filter
def utc(value: Any) -> str:
    if not isinstance(value, dt.datetime):
        return "—"
    if timezone.is_aware(value):
        value = value.astimezone(dt.UTC)
    return f"{value:%Y-%m-%d %H:%M} UTC"


@register.filter
def invalid_fields(form: Any) -> list[Any]:
    """The visible fields of a form that carry errors, in the form's order."""
    return [field for field in form.visible_fields() if field.errors]
