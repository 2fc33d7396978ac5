"""kms_user create NAME --role ROLE [--role ROLE…] [--email E] [--password-stdin] [--totp]
kms_user acknowledge NAME
kms_user show NAME
kms_user reset-totp NAME

`create` prints only the otpauth:// URI on stdout (with --totp), so scripts can capture it;
everything else goes to stderr.
"""

from __future__ import annotations

import sys
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError, CommandParser

from accounts import services
from kms_console.lib.commands import KmsCommand
from kms_console.lib.roles import Role


class Command(KmsCommand):
    help = "Create or update console users, and record custodian acknowledgements."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create or update a user")
        create.add_argument("name")
        create.add_argument("--role", action="append", default=[], choices=Role.values, dest="roles")
        create.add_argument("--email", default="")
        create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
        create.add_argument("--totp", action="store_true", help="enrol a confirmed TOTP device and print its URI once")
        ack = sub.add_parser("acknowledge", help="record the custodian responsibilities acknowledgement")
        ack.add_argument("name")
        show = sub.add_parser("show", help="show a user's roles and second-factor status")
        show.add_argument("name")
        reset = sub.add_parser("reset-totp", help="remove a lost TOTP device; the user enrols again at sign-in")
        reset.add_argument("name")

    def run(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            self._create(options)
        elif action == "acknowledge":
            user = self._user(options["name"])
            if Role.CUSTODIAN not in services.roles_of(user):
                raise CommandError(f"{user.get_username()} is not a custodian")
            services.acknowledge(user=user)
            self.stderr.write(f"Recorded the acknowledgement of {user.get_username()}.")
        elif action == "reset-totp":
            user = services.reset_totp(username=options["name"])
            self.stderr.write(
                f"Removed the TOTP devices of {user.get_username()}; they enrol again at their next sign-in."
            )
        elif action == "show":
            user = self._user(options["name"])
            self.stdout.write(
                f"{user.get_username()} roles={','.join(sorted(services.roles_of(user))) or '-'} "
                f"totp={'yes' if services.has_confirmed_device(user) else 'no'} "
                f"acknowledged={'yes' if services.has_current_acknowledgement(user) else 'no'}"
            )

    def _user(self, name: str) -> Any:
        user = get_user_model().objects.filter(username=name).first()
        if user is None:
            raise CommandError(f"no user named {name!r}")
        return user

    def _create(self, options: dict[str, Any]) -> None:
        password = None
        if options["password_stdin"]:
            line = sys.stdin.readline()
            password = line.rstrip("\r\n")
            if not password:
                raise CommandError("--password-stdin was given but standard input held no password")
        user, uri, created = services.provision_user(
            username=options["name"],
            roles=set(options["roles"]),
            password=password,
            email=options["email"],
            enrol_totp=options["totp"],
        )
        verb = "Created" if created else "Updated"
        self.stderr.write(f"{verb} {user.get_username()} with roles {', '.join(sorted(options['roles'])) or '(none)'}.")
        if uri:
            self.stdout.write(uri)
