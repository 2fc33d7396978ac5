"""Settings for the key management lifecycle console.

Everything comes from the environment, with defaults that serve one machine: SQLite, a private Redis
started by scripts/run, and a SoftHSM2 token, all under ./var/ (KMS_VAR_DIR). Secrets (SECRET_KEY,
HSM PINs) are read from the environment or from files it names; HSM PINs never pass through settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from celery.schedules import crontab

from kms_console.lib.env import envbool, envint, envlist, envsecret, parse_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("KMS_VAR_DIR", BASE_DIR / "var")).resolve()
SECRETS_DIR = VAR_DIR / "secrets"

DEBUG = envbool("DEBUG", False)

# --- Public address -------------------------------------------------------------------------------
# KMS_PUBLIC_URL=https://kms.example.com turns on the HTTPS-only profile (HSTS, secure cookies,
# redirect), which is what `manage.py check --deploy` expects of a production install.
PUBLIC_URL = os.environ.get("KMS_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
_public = urlsplit(PUBLIC_URL)
HTTPS = _public.scheme == "https"
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", [_public.hostname or "127.0.0.1", "127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [PUBLIC_URL])

SECRET_KEY = envsecret("SECRET_KEY", SECRETS_DIR / "secret_key", generate=True)

# --- Applications ---------------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # Our apps, in the direction of dependency: each may import only those listed above it.
    "audit",
    "accounts",
    "approvals",
    "lifecycle",
    "compliance",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "kms_console.lib.middleware.SecurityHeadersMiddleware",
    "kms_console.lib.middleware.RejectNulMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "audit.middleware.AuditContextMiddleware",
    "accounts.middleware.SecondFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "kms_console.lib.web.MethodNotAllowedPageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "kms_console.lib.middleware.ExternalErrorMiddleware",
]

ROOT_URLCONF = "kms_console.urls"
WSGI_APPLICATION = "kms_console.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.roles",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------
DATABASES = {
    "default": parse_database_url(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'kms.sqlite3'}"),
        BASE_DIR,
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Authentication -------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "accounts:login"
OTP_TOTP_ISSUER = os.environ.get("KMS_OTP_ISSUER", "KMS Console")
# Privileged sessions end after this many idle seconds (checked by accounts.middleware).
KMS_IDLE_TIMEOUT_SECONDS = envint("KMS_IDLE_TIMEOUT_SECONDS", 15 * 60, minimum=60)
KMS_LOGIN_MAX_FAILURES = envint("KMS_LOGIN_MAX_FAILURES", 5, minimum=1)
KMS_LOGIN_LOCKOUT_SECONDS = envint("KMS_LOGIN_LOCKOUT_SECONDS", 15 * 60, minimum=1)
SESSION_COOKIE_AGE = envint("SESSION_COOKIE_AGE", 8 * 3600, minimum=300)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True

# --- Internationalisation -------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files ---------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from static/ when collectstatic has not run (local installs, tests).
WHITENOISE_USE_FINDERS = True

# --- Security headers -----------------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if HTTPS:
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
# Scripts come from our own origin only; no inline script anywhere in the templates.
KMS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)

# --- Email ----------------------------------------------------------------------------------------
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = envsecret("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "kms-console@localhost")

# --- REST API -------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiTokenAuthentication",
        "accounts.authentication.OtpSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # DRF's JSON parser, hardened: a deeply nested or oversized body is a 400/413, never a 500.
    "DEFAULT_PARSER_CLASSES": ["kms_console.lib.parsers.SafeJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "kms_console.lib.pagination.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "kms_console.lib.errors.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["accounts.throttling.TokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"token": os.environ.get("KMS_API_RATE", "6000/min")},
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # No OPTIONS metadata: the OpenAPI schema (/api/schema/) describes every endpoint; OPTIONS is 405.
    "DEFAULT_METADATA_CLASS": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "KMS lifecycle console API",
    "DESCRIPTION": "Keys on HSMs through their whole lifecycle, with M-of-N dual control and a tamper-evident audit trail.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    # The schema describes the API; it holds no data, so clients may fetch it before they have a token.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Swagger UI from our own static files (drf-spectacular-sidecar): no CDN, and with the split view
    # its start-up script is a same-origin file, so the strict CSP holds on /api/docs/ too.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # Choice sets shared by several fields get one name each in the OpenAPI document.
    "ENUM_NAME_OVERRIDES": {
        "KeyStateEnum": "lifecycle.states.KeyState",
        "RequestStateEnum": "approvals.models.RequestState",
        "AlgorithmEnum": "lifecycle.api.serializers.ALGORITHM_CHOICES",
    },
}

# --- Celery ---------------------------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", f"redis+socket://{VAR_DIR / 'redis.sock'}")
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = envint("KMS_TASK_TIME_LIMIT", 300, minimum=10)
CELERY_TASK_SOFT_TIME_LIMIT = envint("KMS_TASK_SOFT_TIME_LIMIT", 240, minimum=5)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing must not hang a web request when the broker is away: the job stays queued and beat's
# requeue sweep sends it again later.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 3, "socket_timeout": 10}
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "lifecycle-sweep": {"task": "lifecycle.tasks.lifecycle_sweep", "schedule": 60.0},
    "lifecycle-requeue-stale-jobs": {"task": "lifecycle.tasks.requeue_stale_jobs", "schedule": 120.0},
    "approvals-expire-and-remind": {"task": "approvals.tasks.expire_and_remind", "schedule": 60.0},
    "audit-checkpoint": {"task": "audit.tasks.sign_checkpoint", "schedule": 15 * 60.0},
    "compliance-snapshot": {"task": "compliance.tasks.take_snapshot", "schedule": crontab(hour=2, minute=30)},
    # Restore-test a sample of backups daily; close restore share windows that ran out.
    "backups-verify": {"task": "lifecycle.backups.tasks.verify_backups", "schedule": crontab(hour=3, minute=15)},
    "backups-expire-restores": {"task": "lifecycle.backups.tasks.expire_restores", "schedule": 300.0},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- HSM ------------------------------------------------------------------------------------------
# The PIN itself is never a setting: the driver reads it from the environment variable or the file
# named here at login time, so it cannot show up in a settings dump or a debug page.
KMS_PKCS11_MODULE = os.environ.get("KMS_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
KMS_HSM_TOKEN_LABEL = os.environ.get("KMS_HSM_TOKEN_LABEL", "kms-default")
KMS_HSM_PIN_ENV = "KMS_HSM_PIN"
KMS_HSM_PIN_FILE = os.environ.get("KMS_HSM_PIN_FILE", str(SECRETS_DIR / "hsm_user_pin"))
KMS_SOFTHSM2_CONF = os.environ.get("SOFTHSM2_CONF", str(VAR_DIR / "softhsm2.conf"))
# What an hsm_change request may register: these modules only, PINs from these directories only.
KMS_PKCS11_ALLOWED_MODULES = envlist("KMS_PKCS11_ALLOWED_MODULES", [KMS_PKCS11_MODULE])
KMS_HSM_PIN_DIRS = envlist("KMS_HSM_PIN_DIRS", [str(SECRETS_DIR), "/run/secrets"])

# --- Product knobs --------------------------------------------------------------------------------
KMS_ACKNOWLEDGEMENT_VALID_DAYS = envint("KMS_ACKNOWLEDGEMENT_VALID_DAYS", 365, minimum=1)
KMS_APPROVAL_REMINDER_HOURS = envint("KMS_APPROVAL_REMINDER_HOURS", 4, minimum=1)
KMS_CHECKPOINT_MAX_AGE_HOURS = envint("KMS_CHECKPOINT_MAX_AGE_HOURS", 24, minimum=1)
# Escrow holders must take their shares within this many hours; past it the shares still sealed are
# wiped and the ceremony fails (lifecycle.backups.escrow).
KMS_ESCROW_SHARE_RETRIEVAL_HOURS = envint("KMS_ESCROW_SHARE_RETRIEVAL_HOURS", 72, minimum=1)
# The object that signs audit checkpoints with a key on the HSM (audit knows nothing of HSMs).
KMS_AUDIT_SIGNER = os.environ.get("KMS_AUDIT_SIGNER", "lifecycle.audit_signer.HsmAuditSigner")
KMS_CONTROLS_FILE = Path(os.environ.get("KMS_CONTROLS_FILE", BASE_DIR / "data" / "controls.yaml"))
# When true, a missing PostgreSQL/Redis/SoftHSM fails the test run instead of skipping tests (.ci/run).
KMS_REQUIRE_SERVICES = envbool("KMS_REQUIRE_SERVICES", False)

# --- Logging --------------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # A refused or missing page (403, 404) is an ordinary answer, logged in one line, not with the
    # traceback of the exception that produced it (kms_console.lib.logs).
    "formatters": {
        "plain": {
            "()": "kms_console.lib.logs.ClientErrorFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
