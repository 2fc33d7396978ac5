"""The console's second-factor gate, custodian acknowledgement gate and idle timeout."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse

from audit.services import record
from kms_console.lib.errors import error_body
from kms_console.lib.roles import Role

from . import services

# Paths a signed-in user may reach before finishing the second factor.
OPEN_PREFIXES = ("/static/", "/api/", "/accounts/", "/favicon")
LAST_SEEN_KEY = "kms_last_seen"
# accounts.views.login_view shows this after an idle sign-out (the messages framework runs after
# this middleware, so it cannot be used here).
NOTICE_SESSION_KEY = "kms_notice"
# The job-status poll of an open page sends this header: a poll is not activity, so a page left
# open does not keep a privileged session alive.
POLL_HEADER = "HTTP_X_KMS_POLL"


class SecondFactorMiddleware:
    """For console sessions:

    1. a privileged user or auditor idle for longer than KMS_IDLE_TIMEOUT_SECONDS is signed out
       (console pages and the API's session authentication alike);
    2. on console pages, a user who has (or must have) a TOTP device but has not verified it is sent
       to the OTP step,
       or to enrolment when they have no confirmed device yet;
    3. a custodian without a current acknowledgement is sent to the responsibilities text.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if not user.is_authenticated or request.path.startswith("/static/"):
            return self.get_response(request)
        privileged = services.is_privileged(user)
        # Sessions that can change or read sensitive things time out when idle; the API's session
        # authentication follows the same rule (API tokens are not sessions and are not affected).
        timed = privileged or Role.AUDITOR in services.roles_of(user)
        now = time.time()
        last_seen = request.session.get(LAST_SEEN_KEY)
        if timed and last_seen and now - last_seen > settings.KMS_IDLE_TIMEOUT_SECONDS:
            record("auth.session_expired", actor=user, target_type="user", target_id=user.pk)
            logout(request)
            minutes = settings.KMS_IDLE_TIMEOUT_SECONDS // 60
            if request.path.startswith("/api/"):
                return JsonResponse(
                    error_body("session_expired", f"The console session ended after {minutes} idle minutes."),
                    status=401,
                )
            request.session[NOTICE_SESSION_KEY] = (
                f"You were signed out after {minutes} minutes without activity. Please sign in again."
            )
            return redirect(f"{reverse('accounts:login')}?{urlencode({'next': request.path})}")
        if not request.META.get(POLL_HEADER):
            request.session[LAST_SEEN_KEY] = now
        if request.path.startswith(OPEN_PREFIXES):
            return self.get_response(request)
        if not user.is_verified():
            if services.has_confirmed_device(user):
                return redirect(f"{reverse('accounts:otp')}?{urlencode({'next': request.path})}")
            if privileged:
                return redirect(f"{reverse('accounts:enrol')}?{urlencode({'next': request.path})}")
        if Role.CUSTODIAN in services.roles_of(user) and not services.has_current_acknowledgement(user):
            return redirect(f"{reverse('accounts:acknowledge')}?{urlencode({'next': request.path})}")
        return self.get_response(request)
