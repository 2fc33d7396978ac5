"""kms_token create --user NAME [--scope S…] [--expires-in DAYS] [--name TEXT]
kms_token revoke PREFIX
kms_token list [--user NAME]

`create` prints the token on stdout, once; only its SHA-256 is stored.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError, CommandParser

from accounts import services
from accounts.models import ApiToken
from kms_console.lib.commands import KmsCommand


class Command(KmsCommand):
    help = "Create, list and revoke API tokens."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create")
        create.add_argument("--user", required=True)
        create.add_argument("--scope", action="append", dest="scopes", choices=ApiToken.Scope.values)
        create.add_argument("--expires-in", type=int, dest="expires_in", metavar="DAYS")
        create.add_argument("--name", default="")
        revoke = sub.add_parser("revoke")
        revoke.add_argument("prefix")
        listing = sub.add_parser("list")
        listing.add_argument("--user")

    def run(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"no user named {options['user']!r}")
            # Least privilege from the command line: without --scope, what the user's roles can use.
            scopes = options["scopes"] or sorted(services.default_scopes(user))
            if ApiToken.Scope.APPROVE in scopes and "approve" not in services.default_scopes(user):
                raise CommandError(
                    f"{user.get_username()} never approves, so their token cannot have the approve scope"
                )
            token, raw = services.create_token(
                user=user, scopes=scopes, expires_in_days=options["expires_in"], name=options["name"]
            )
            self.stdout.write(raw)
            # stdout stays the token alone (scripts read it); what it may do goes to stderr.
            expires = token.expires_at.date() if token.expires_at else "never"
            self.stderr.write(f"Scopes: {', '.join(sorted(token.scopes))}; expires: {expires}.")
        elif action == "revoke":
            tokens = list(ApiToken.objects.filter(prefix__startswith=options["prefix"], revoked_at__isnull=True))
            if len(tokens) != 1:
                raise CommandError(f"{len(tokens)} live tokens start with {options['prefix']!r}; give a longer prefix")
            services.revoke_token(token=tokens[0])
            self.stderr.write(f"Revoked {tokens[0].prefix}….")
        else:
            tokens = ApiToken.objects.select_related("user").order_by("-created_at")
            if options["user"]:
                tokens = tokens.filter(user__username=options["user"])
            for token in tokens:
                state = "revoked" if token.revoked_at else "live"
                self.stdout.write(
                    f"{token.prefix}…  {token.user.get_username():<20} {','.join(token.scopes):<28} {state}"
                    f"  expires={token.expires_at.date() if token.expires_at else 'never'}"
                    f"  last_used={token.last_used_at or '-'}"
                )
