"""Who may call what in the REST API: the credentials' scope, then the user's role.

The rules (SPEC §3, issue 7):
- Every endpoint needs an authenticated caller (401 otherwise): an API token or an OTP-verified
  console session. Sessions carry every scope; their roles still apply.
- Each action names the token scope it needs: `read` for reads, `request` for opening and
  cancelling requests, `approve` for approving, rejecting and retrying, `use` for key use.
- Each action names the roles that may reach it. Humans with a role (key_admin, custodian,
  security_officer, auditor) read everything; service accounts (api_client) reach only the keys
  granted to them and key use; users without a role reach nothing but their own tokens.
- What a role may *change* is decided by the services (the dual-control engine checks requester
  and approver roles, and audits refusals), so the API never holds a second copy of those rules.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, permissions
from rest_framework.request import Request

from accounts import services
from accounts.authentication import token_scopes
from accounts.models import ApiToken
from kms_console.lib.roles import Role

READ = ApiToken.Scope.READ.value
REQUEST = ApiToken.Scope.REQUEST.value
APPROVE = ApiToken.Scope.APPROVE.value
USE = ApiToken.Scope.USE.value

HUMAN_ROLES = frozenset({Role.KEY_ADMIN, Role.CUSTODIAN, Role.SECURITY_OFFICER, Role.AUDITOR})
ANY_ROLE = frozenset(Role.values)


class ScopeAndRole(permissions.BasePermission):
    """Checks `view.required_scope()` against the credentials and `view.allowed_roles()` against the user.

    A view returns None from `allowed_roles()` when any authenticated user may call the action
    (their own tokens). Refusals raise 403 with the codes `scope_required` or `role_required`.
    """

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not user or not user.is_authenticated:
            return False  # DRF answers 401 with the WWW-Authenticate challenge
        if not _handles(view, request):
            return True  # DRF answers 405: no scope or role makes an unsupported method work
        scope = view.required_scope()
        if scope and scope not in token_scopes(request):
            raise exceptions.PermissionDenied(f"This needs a token with the '{scope}' scope.", code="scope_required")
        roles = view.allowed_roles()
        if roles is not None and not services.roles_of(user) & roles:
            raise exceptions.PermissionDenied(
                "Your roles do not allow this (it needs one of: " + ", ".join(sorted(roles)) + ").",
                code="role_required",
            )
        return True


def _handles(view: Any, request: Request) -> bool:
    """The view has a handler for the request's method (else the answer is 405, not a refusal)."""
    method = request.method.lower()
    if method not in getattr(view, "http_method_names", ()):
        return False
    if method == "options":
        # DRF answers OPTIONS itself with the view's metadata, when a metadata class is set (the
        # project sets none: 405); with one, it is checked like a read.
        return getattr(view, "metadata_class", None) is not None
    if getattr(view, "action_map", None) is not None:  # a viewset: its route maps methods to actions
        return method in view.action_map
    return hasattr(view, method)


class ApiAccessMixin:
    """Declarations a view makes for `ScopeAndRole`.

    `action_scopes` maps a view action (or HTTP method, lower case) to the scope it needs; unlisted safe
    methods need `read`, unlisted writes `request`. `action_roles` maps an action to the roles allowed;
    unlisted actions allow `default_roles`.
    """

    action_scopes: dict[str, str] = {}
    action_roles: dict[str, frozenset[str] | None] = {}
    default_roles: frozenset[str] | None = HUMAN_ROLES

    request: Request

    def _action_name(self) -> str:
        return getattr(self, "action", None) or self.request.method.lower()

    def required_scope(self) -> str:
        name = self._action_name()
        if name in self.action_scopes:
            return self.action_scopes[name]
        return READ if self.request.method in permissions.SAFE_METHODS else REQUEST

    def allowed_roles(self) -> frozenset[str] | None:
        return self.action_roles.get(self._action_name(), self.default_roles)
