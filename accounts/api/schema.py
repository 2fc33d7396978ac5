"""How drf-spectacular describes our authentication classes in the OpenAPI document.

Imported by `accounts.api.urls`, so the extensions are registered before any schema is generated.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "An API token (`manage.py kms_token create` or POST /api/v1/tokens/), sent as "
            "`Authorization: Token <token>`. Its scopes (read, request, approve, use) limit what it can do.",
        }


class OtpSessionScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.OtpSessionAuthentication"
    name = "consoleSession"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": "sessionid",
            "description": "The console's session, once its second factor (TOTP) was verified; carries every scope.",
        }
