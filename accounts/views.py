"""Sign-in pages: password, TOTP code, TOTP enrolment, custodian acknowledgement, sign-out.

The order a person goes through (accounts.middleware sends them to the step they are missing):
1. username and password (`login`): failures are counted and audited; enough of them lock the
   account for KMS_LOGIN_LOCKOUT_SECONDS (the lock runs out by itself; nobody lifts it), and a
   locked account is refused even with the right password. Service accounts (api_client) are
   refused here even with the right password: they use API tokens (audited as a failed sign-in);
2. the TOTP code (`otp`) for everyone with a confirmed device; wrong codes count as failed sign-ins.
   A lost device is reset by an operator (`manage.py kms_user reset-totp NAME`), not in the console;
3. enrolment (`enrol`) for privileged users without a device: QR code plus the secret in text,
   confirmed with a first code;
4. custodians without a current acknowledgement read and accept the responsibilities text.
The sign-in is recorded (`auth.login`) once its last factor succeeded.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
from typing import Any
from urllib.parse import urlencode

import qrcode
import qrcode.image.svg
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate
from django.contrib.auth import login as auth_login
from django.contrib.auth import logout as auth_logout
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST
from django_otp import login as otp_login
from django_otp.plugins.otp_totp.models import TOTPDevice

from kms_console.lib.errors import ApplicationError
from kms_console.lib.roles import Role
from kms_console.lib.web import add_service_error, forget_value, safe_next

from . import responsibilities, services
from .forms import AcknowledgeForm, CodeForm, LoginForm
from .middleware import NOTICE_SESSION_KEY

# The unconfirmed device the enrolment page shows, so a reload keeps the same QR code.
ENROL_SESSION_KEY = "kms_enrol_device"
ENROL_REPLACED_SESSION_KEY = "kms_enrol_replaced"


def _with_next(url_name: str, next_url: str) -> str:
    return f"{reverse(url_name)}?{urlencode({'next': next_url})}"


def _duration(seconds: float) -> str:
    """'15 minutes', '1 minute', '40 seconds': a wait in words, rounded up."""
    seconds = max(1, math.ceil(seconds))
    if seconds >= 60 and seconds % 60 == 0:
        minutes = seconds // 60
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def _locked_message(until: dt.datetime) -> str:
    # There is no unlock function in the console: the lock simply runs out (KMS_LOGIN_LOCKOUT_SECONDS).
    return (
        f"Too many failed sign-ins: this account is locked until {until.astimezone(dt.UTC):%H:%M} UTC. "
        f"The lock ends by itself then ({_duration(settings.KMS_LOGIN_LOCKOUT_SECONDS)} after the last failed "
        "try); nobody needs to unlock it. Sign in again after that time."
    )


def _throttle_wait(device: TOTPDevice) -> dt.datetime | None:
    """Until when django-otp refuses every code of this device after failed tries (None: it accepts codes)."""
    allowed, data = device.verify_is_allowed()
    if allowed or not data or not data.get("locked_until"):
        return None
    return data["locked_until"]


def _throttled_message(until: dt.datetime) -> str:
    wait = _duration((until - timezone.now()).total_seconds())
    return (
        f"Codes are refused for {wait} more, even a correct one: after a wrong code the authenticator is "
        f"paused for a short time that doubles with each wrong try (until {until.astimezone(dt.UTC):%H:%M:%S} UTC). "
        "Wait, then enter the code your app shows at that time."
    )


SERVICE_ACCOUNT_MESSAGE = (
    "This is a service account (API client). Service accounts do not sign in to the console: they use "
    "the REST API at /api/v1/ with an API token (Authorization: Token …)."
)


def _sign_out_locked(request: HttpRequest, until: dt.datetime) -> HttpResponse:
    auth_logout(request)
    messages.error(request, _locked_message(until))
    return redirect("accounts:login")


def _complete_sign_in(request: HttpRequest, user: Any, device: TOTPDevice) -> None:
    """The second factor succeeded: a new session key for the raised privilege, then record it."""
    request.session.cycle_key()
    otp_login(request, device)
    services.register_login_success(user)


def _second_factor_redirect(request: HttpRequest, next_url: str) -> HttpResponse | None:
    """Where a signed-in but not yet verified user must go first (None when nothing is missing)."""
    user = request.user
    if user.is_verified():
        return None
    if services.has_confirmed_device(user):
        return redirect(_with_next("accounts:otp", next_url))
    if services.is_privileged(user):
        return redirect(_with_next("accounts:enrol", next_url))
    return None


@sensitive_post_parameters("password")
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    next_url = safe_next(request)
    notice = request.session.pop(NOTICE_SESSION_KEY, None)
    if notice:
        messages.info(request, notice)
    if request.user.is_authenticated and request.method != "POST":
        # Signed in already: carry on (the gate sends them to any step they still miss).
        return _second_factor_redirect(request, next_url) or redirect(next_url)
    form = LoginForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        username = form.cleaned_data["username"]
        locked_until = services.login_locked_until(username)
        if locked_until is not None:
            services.register_login_failure(username, reason="account locked")
            form.add_error(None, _locked_message(locked_until))
        else:
            user = authenticate(request, username=username, password=form.cleaned_data["password"])
            if user is None:
                locked_until = services.register_login_failure(username, reason="wrong username or password")
                form.add_error(
                    None,
                    _locked_message(locked_until)
                    if locked_until
                    else "The username or password is not correct. Check them and try again.",
                )
            elif Role.API_CLIENT in services.roles_of(user):
                # Right password, wrong door: recorded as a failed sign-in, and no session is opened.
                services.register_login_failure(username, reason="service account")
                form.add_error(None, SERVICE_ACCOUNT_MESSAGE)
            else:
                auth_login(request, user)
                if services.has_confirmed_device(user):
                    return redirect(_with_next("accounts:otp", next_url))
                if services.is_privileged(user):
                    return redirect(_with_next("accounts:enrol", next_url))
                services.register_login_success(user)
                return redirect(next_url)
    return render(request, "accounts/login.html", {"form": form, "next": next_url, "hide_nav": True})


@sensitive_post_parameters("code")
@never_cache
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def otp_view(request: HttpRequest) -> HttpResponse:
    user = request.user
    next_url = safe_next(request)
    if user.is_verified():
        return redirect(next_url)
    if not services.has_confirmed_device(user):
        return redirect(_with_next("accounts:enrol", next_url)) if services.is_privileged(user) else redirect(next_url)
    form = CodeForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        locked_until = services.login_locked_until(user.get_username())
        if locked_until is not None:
            return _sign_out_locked(request, locked_until)
        pending = services.confirmed_device(user)
        throttled_until = _throttle_wait(pending) if pending is not None else None
        # The device's replay and throttle counters must be saved even when the code is refused.
        with transaction.atomic():
            device = services.verify_user_otp(user=user, code=form.cleaned_data["code"], purpose="sign-in")
        if device is not None:
            _complete_sign_in(request, user, device)
            return redirect(next_url)
        locked_until = services.register_login_failure(user.get_username(), reason="wrong one-time password")
        if locked_until is not None:
            return _sign_out_locked(request, locked_until)
        if throttled_until is not None:
            form.add_error("code", f"That code was not checked. {_throttled_message(throttled_until)}")
        else:
            form.add_error(
                "code",
                "That code was not accepted: it is wrong, or was used already. Wait for the next code and enter "
                "it (after a wrong code, codes are refused for a second or two).",
            )
    forget_value(form, "code")
    return render(request, "accounts/otp.html", {"form": form, "next": next_url, "hide_nav": True})


def _pending_device(request: HttpRequest, user: Any) -> TOTPDevice:
    """The device this session is enrolling; a new one (with a new secret) for a new session."""
    pk = request.session.get(ENROL_SESSION_KEY)
    device = TOTPDevice.objects.filter(user=user, pk=pk, confirmed=False).first() if pk else None
    if device is None:
        device, replaced = services.start_totp_enrolment(user)
        request.session[ENROL_SESSION_KEY] = device.pk
        request.session[ENROL_REPLACED_SESSION_KEY] = replaced
    return device


def _responsibility_paragraphs(text: str) -> tuple[str, list[str]]:
    """The responsibilities text as an introduction and its numbered items, with the source's line
    wrapping undone (the text is hard-wrapped for terminals and diffs)."""
    intro: list[str] = []
    items: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        number = re.match(r"^\d+\.\s+", stripped)
        if number:
            items.append(stripped[number.end() :])
        elif items and line.startswith(" "):
            items[-1] = f"{items[-1]} {stripped}"
        else:
            intro.append(stripped)
    return " ".join(intro), items


def _qr_data_uri(text: str) -> str:
    svg = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, border=2).to_string()
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def _grouped(secret: str) -> str:
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


@sensitive_post_parameters("code")
@never_cache
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def enrol_view(request: HttpRequest) -> HttpResponse:
    user = request.user
    next_url = safe_next(request)
    was_verified = user.is_verified()
    # Only a verified session may replace a device: a password alone must never enrol a new one.
    if services.has_confirmed_device(user) and not was_verified:
        return redirect(_with_next("accounts:otp", next_url))
    device = _pending_device(request, user)
    form = CodeForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        # django-otp refuses every code for a moment after a wrong one: say so rather than blame the clock.
        throttled_until = _throttle_wait(device)
        try:
            confirmed = services.confirm_totp_enrolment(
                user=user, device_id=device.pk, code=form.cleaned_data["code"], replacing=was_verified
            )
        except ApplicationError as exc:
            device = _pending_device(request, user)
            if exc.code == "otp_invalid" and throttled_until is not None:
                form.add_error("code", f"That code was not checked. {_throttled_message(throttled_until)}")
            else:
                add_service_error(form, exc, default_field="code")
                wait_until = _throttle_wait(device) if exc.code == "otp_invalid" else None
                if wait_until is not None:
                    form.add_error(
                        "code",
                        f"Wait {_duration((wait_until - timezone.now()).total_seconds())} before the next try: "
                        "after a wrong code, codes are refused for a short time.",
                    )
        else:
            request.session.pop(ENROL_SESSION_KEY, None)
            request.session.pop(ENROL_REPLACED_SESSION_KEY, None)
            if was_verified:
                otp_login(request, confirmed)
            else:
                _complete_sign_in(request, user, confirmed)
            messages.success(request, "Your authenticator app is set up. From now on you sign in with its codes.")
            return redirect(next_url)
    forget_value(form, "code")
    secret = base64.b32encode(device.bin_key).decode("ascii")
    context = {
        "form": form,
        "next": next_url,
        "hide_nav": True,
        "qr_data_uri": _qr_data_uri(device.config_url),
        "secret": _grouped(secret),
        "replacing": was_verified,
        # An earlier sign-in showed another secret, now void: an app that scanned it must scan this one.
        "earlier_secret_void": bool(request.session.get(ENROL_REPLACED_SESSION_KEY)),
    }
    return render(request, "accounts/enrol.html", context)


@never_cache
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def acknowledge_view(request: HttpRequest) -> HttpResponse:
    user = request.user
    next_url = safe_next(request)
    gate = _second_factor_redirect(request, _with_next("accounts:acknowledge", next_url))
    if gate is not None:
        return gate
    if Role.CUSTODIAN not in services.roles_of(user):
        messages.info(request, "Only key custodians acknowledge the custodian responsibilities.")
        return redirect(next_url)
    current = services.current_acknowledgement(user)
    intro, items = _responsibility_paragraphs(responsibilities.TEXT)
    form = AcknowledgeForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        ack = services.acknowledge(user=user)
        messages.success(
            request,
            f"Your acceptance of the custodian responsibilities (version {ack.text_version}) is recorded. "
            "You may now approve requests.",
        )
        return redirect(next_url)
    context = {
        "form": form,
        "next": next_url,
        "hide_nav": current is None,
        "current": current,
        "title": responsibilities.TITLE,
        "text": responsibilities.TEXT,
        "intro": intro,
        "items": items,
        "version": responsibilities.VERSION,
        "digest": responsibilities.DIGEST,
    }
    return render(request, "accounts/acknowledge.html", context)


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        services.register_logout(request.user)
    auth_logout(request)
    messages.info(request, "You are signed out.")
    return redirect("accounts:login")
