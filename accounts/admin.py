"""Admin registrations of users, groups (roles), TOTP devices and the accounts app: read-only.

Django's own User and Group admins, and django-otp's TOTP device admin, would let a superuser change
roles (bypassing the dual-controlled custodian_change), reset a custodian's password or read a TOTP
secret off its QR code page. They are replaced by read-only admins that never show the password
hash, the TOTP secret or a token's digest.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django_otp.plugins.otp_totp.models import TOTPDevice

from kms_console.lib.admin import register_app_read_only, register_read_only

register_read_only(
    [get_user_model(), Group, TOTPDevice],
    hidden={"user": ("password",), "group": ("permissions",), "totpdevice": ("key",)},
)
register_app_read_only("accounts", hidden={"apitoken": ("digest",)})
