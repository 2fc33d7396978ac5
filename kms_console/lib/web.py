"""Helpers shared by the console's server-rendered views (every app's views.py).

- `console_view(*roles)`: a page for signed-in users holding one of `roles` (default: any console
  role). Anonymous visitors go to the sign-in page, everyone else without the role gets a 403 page.
  The second-factor gate (accounts.middleware) runs before any view; the decorator checks again
  that a privileged session is OTP-verified, so a view can never be reached half signed in.
- `add_service_error(form, exc)`: an ApplicationError from a service becomes a sentence next to the
  field it concerns (or above the form), never a 500.
- `paginate`, `safe_next`, `sentence`.
- `MethodNotAllowedPageMiddleware`: a console address opened with a method it does not take (a GET
  on a POST-only action) answers 405 with a page that says so, instead of Django's empty body.

Roles are Django groups named after `kms_console.lib.roles.Role` (accounts.services.roles_of reads
them the same way and shares the per-request cache attribute).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from .errors import ApplicationError
from .roles import PRIVILEGED_ROLES, Role

# Roles that use the console; service accounts (api_client) use the REST API only.
CONSOLE_ROLES = frozenset({Role.KEY_ADMIN, Role.CUSTODIAN, Role.SECURITY_OFFICER, Role.AUDITOR})
# Who reads the audit trail in the console.
AUDIT_READERS = frozenset({Role.AUDITOR, Role.SECURITY_OFFICER})
PAGE_SIZE = 25
# "name: must be …" reads as "Name must be …"; other messages after the colon stand on their own.
SENTENCE_STARTERS = frozenset({"the", "a", "an", "no", "unknown", "give", "must", "this", "there", "only", "you"})
PREDICATE_WORDS = frozenset({"must", "is", "are", "may", "should", "needs", "has", "cannot", "does"})


def user_roles(user: Any) -> set[str]:
    """The user's console roles (cached on the user object for the rest of the request)."""
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return set()
    cached = getattr(user, "_kms_roles", None)
    if cached is None:
        cached = {group.name for group in user.groups.all()} & set(Role.values)
        user._kms_roles = cached
    return cached


def console_view(*roles: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    allowed = frozenset(roles) or CONSOLE_ROLES

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            user = request.user
            if not user.is_authenticated:
                return redirect_to_login(request.get_full_path(), resolve_url(settings.LOGIN_URL))
            held = user_roles(user)
            if held & PRIVILEGED_ROLES and not user.is_verified():
                return redirect(f"{reverse('accounts:otp')}?next={request.path}")
            if not held & allowed:
                needed = ", ".join(sorted(Role(role).label.lower() for role in allowed))
                raise PermissionDenied(f"This page is for these roles: {needed}.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def sentence(text: str) -> str:
    """Make a service's message read as a sentence: a capital for an ordinary first word, a final full stop."""
    text = (text or "").strip()
    if not text:
        return "The request could not be carried out."
    # Capitalise only ordinary words: a message may start with a username or an operation name.
    if text.split(" ", 1)[0] in SENTENCE_STARTERS:
        text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else f"{text}."


def add_service_error(
    form: forms.Form, exc: ApplicationError, *, fields: dict[str, str] | None = None, default_field: str | None = None
) -> None:
    """Show a service's refusal on the form, next to the field it names.

    Services name the offending input in `exc.details` (keys are parameter names); `fields` maps a
    parameter name to the form field when they differ. Messages of the shape "name: must be …" are
    turned into "Name must be …". Without a matching field the message goes to `default_field`, or
    above the form.
    """
    mapping = fields or {}
    target = None
    for name in exc.details or {}:
        candidate = mapping.get(name, name)
        if candidate in form.fields:
            target = candidate
            break
    if target is None and default_field in form.fields:
        target = default_field
    message = exc.message
    for name in exc.details or {}:
        prefix = f"{name}: "
        if message.startswith(prefix):
            rest = message[len(prefix) :]
            if target is not None and rest.split(" ", 1)[0] in PREDICATE_WORDS:
                label = str(form.fields[target].label or target.replace("_", " ").capitalize())
                rest = f"{label} {rest}"
            message = rest
            break
    form.add_error(target, sentence(message))


def empty_choice(field: forms.Field, label: str, choices: Any) -> None:
    """Give a django-filter choice field a readable empty choice ("Any state").

    Its choice iterator is bound to the field it was made for; assigning the choices again binds
    it to this form's copy, whose `empty_label` we just set.
    """
    field.empty_label = label
    field.choices = list(choices)


def forget_value(form: forms.Form, name: str) -> None:
    """Re-render a bound form without echoing one field back (a used one-time code)."""
    if form.is_bound and name in form.data:
        form.data = form.data.copy()
        form.data[name] = ""


class MethodNotAllowedPageMiddleware:
    """Give the console's empty 405 answers (from `require_POST` and friends) a page.

    The status and the Allow header stay as the view set them; the REST API (`/api/`) keeps its
    JSON error bodies, and a 405 that already has a body is left alone.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code != 405
            or request.path.startswith("/api/")
            or getattr(response, "streaming", False)
            or response.content
        ):
            return response
        allow = response.get("Allow", "")
        referer = request.META.get("HTTP_REFERER", "")
        back = (
            referer if referer and url_has_allowed_host_and_scheme(referer, allowed_hosts={request.get_host()}) else ""
        )
        context = {
            "method": request.method,
            "allowed": [method.strip() for method in allow.split(",") if method.strip()],
            "back": back,
        }
        page = render(request, "405.html", context, status=405)
        if allow:
            page["Allow"] = allow
        return page


def paginate(request: HttpRequest, items: Any, per_page: int = PAGE_SIZE) -> Page:
    """One page of `items` (a bad or out-of-range page number gives the nearest page, never an error)."""
    return Paginator(items, per_page).get_page(request.GET.get("page"))


def safe_next(request: HttpRequest, default: str = "/") -> str:
    """The `next` parameter when it points into this site, else `default`."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default
