"""Forms that open lifecycle requests in the console.

They check the shape of the input (types, ranges, required fields) and turn it into the parameters
the registered action expects (`lifecycle.actions`); the action's `prepare` and the dual-control
engine decide everything else, and their refusals come back as errors next to the fields.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model

from kms_console.lib.errors import ApplicationError
from kms_console.lib.roles import APPROVER_ROLES, Role

from .hsm.base import ALGORITHMS, USAGE_ENCRYPT_DECRYPT, USAGE_MAC, USAGE_SIGN_VERIFY, USAGE_WRAP_UNWRAP
from .models import BackupRule, Hsm, Key, Policy, PolicyVersion
from .policies import QUORUM_OPERATIONS, STANDARD_POLICY, clean_settings, settings_of

USAGE_CHOICES = [
    (USAGE_ENCRYPT_DECRYPT, "Encrypt and decrypt data (AES)"),
    (USAGE_WRAP_UNWRAP, "Wrap and unwrap other keys (AES key-encryption key)"),
    (USAGE_SIGN_VERIFY, "Sign and verify (RSA, EC)"),
    (USAGE_MAC, "Compute and verify MACs (HMAC)"),
]
OPERATIONS_BY_USAGE = {
    USAGE_ENCRYPT_DECRYPT: [("encrypt", "Encrypt"), ("decrypt", "Decrypt")],
    USAGE_SIGN_VERIFY: [("sign", "Sign"), ("verify", "Verify")],
    USAGE_MAC: [("mac", "Compute MAC"), ("verify_mac", "Verify MAC")],
    USAGE_WRAP_UNWRAP: [],
}
DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"]
JUSTIFICATION_HELP = "Why is this step needed? Approvers read this before they decide; it is kept in the audit trail."


def justification_field() -> forms.CharField:
    return forms.CharField(
        label="Justification",
        max_length=2000,
        help_text=JUSTIFICATION_HELP,
        error_messages={
            "required": "Give a justification: say why this step is needed.",
            "max_length": "Keep the justification under 2000 characters.",
        },
        widget=forms.Textarea(attrs={"rows": 3}),
    )


class UtcDateTimeInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self) -> None:
        super().__init__(format="%Y-%m-%dT%H:%M")


def utc_datetime_field(label: str, *, required: bool, help_text: str = "") -> forms.DateTimeField:
    return forms.DateTimeField(
        label=label,
        required=required,
        input_formats=DATETIME_FORMATS,
        help_text=help_text or "Date and time in UTC.",
        error_messages={
            "required": f"Give the {label.lower()} (UTC).",
            "invalid": "Enter a date and time such as 2026-12-24 09:00 (UTC).",
        },
        widget=UtcDateTimeInput(),
    )


def as_utc(value: dt.datetime) -> dt.datetime:
    """The form's datetime, read as UTC whatever the server's time zone (the page says UTC)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def iso_utc(value: dt.datetime) -> str:
    return as_utc(value).isoformat().replace("+00:00", "Z")


class RequestForm(forms.Form):
    """Every request form ends with the justification the engine requires."""

    justification = justification_field()

    def parameters(self) -> dict[str, Any]:
        return {}


# --- Keys -----------------------------------------------------------------------------------------


class GenerateKeyForm(RequestForm):
    ACTIVATE_NOW = "now"
    ACTIVATE_AT = "at"
    ACTIVATE_MANUAL = "manual"

    name = forms.CharField(
        max_length=64,
        help_text="Letters, digits, dots, dashes or underscores, starting with a letter or digit; unique.",
        error_messages={"required": "Give the key a name."},
    )
    algorithm = forms.ChoiceField(
        choices=[(name, name) for name in sorted(ALGORITHMS)],
        initial="AES-256",
        error_messages={"required": "Choose an algorithm.", "invalid_choice": "Choose one of the listed algorithms."},
    )
    usage = forms.ChoiceField(
        choices=USAGE_CHOICES,
        help_text="Fixed for the key's life. AES keys encrypt or wrap; RSA and EC keys sign; HMAC keys compute MACs.",
        error_messages={
            "required": "Choose what the key is for.",
            "invalid_choice": "Choose one of the listed usages.",
        },
    )
    policy = forms.ChoiceField(
        help_text="The policy sets cryptoperiods, destruction waiting period and how many approvals each step needs.",
        error_messages={"required": "Choose a policy.", "invalid_choice": "Choose one of the listed policies."},
    )
    hsm = forms.ChoiceField(
        label="HSM",
        error_messages={"required": "Choose an HSM.", "invalid_choice": "Choose one of the registered HSMs."},
    )
    activation = forms.ChoiceField(
        label="Activation",
        choices=[
            (ACTIVATE_NOW, "As soon as it is generated"),
            (ACTIVATE_AT, "At a date and time"),
            (ACTIVATE_MANUAL, "Leave it in pre-activation (activate later by request)"),
        ],
        initial=ACTIVATE_NOW,
        widget=forms.RadioSelect,
        error_messages={"required": "Choose when the key becomes active."},
    )
    activate_at = utc_datetime_field(
        "Activation date", required=False, help_text="Only with “At a date and time”. UTC."
    )
    tags = forms.CharField(
        required=False,
        max_length=1100,
        help_text="Comma-separated, for example: payments, pci, team=cards",
    )
    description = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))
    justification = justification_field()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        policies = list(Policy.objects.order_by("name").values_list("name", flat=True))
        self.fields["policy"].choices = [(name, name) for name in policies]
        self.fields["policy"].initial = STANDARD_POLICY
        hsms = list(Hsm.objects.filter(retired_at__isnull=True).order_by("-is_default", "name"))
        self.fields["hsm"].choices = [(h.name, h.name) for h in hsms]
        self.fields["hsm"].help_text = "The token that will hold the key; the default HSM is listed first."
        self.fields["hsm"].initial = hsms[0].name if hsms else None

    def clean_tags(self) -> list[str]:
        raw = self.cleaned_data.get("tags") or ""
        return [tag.strip() for tag in raw.split(",") if tag.strip()]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        wants_date = data.get("activation") == self.ACTIVATE_AT
        if wants_date and not data.get("activate_at") and "activate_at" not in self.errors:
            self.add_error(
                "activate_at", "Give the date and time of activation (UTC), or choose another activation option."
            )
        return data

    def parameters(self) -> dict[str, Any]:
        data = self.cleaned_data
        params: dict[str, Any] = {
            "name": data["name"].strip(),
            "algorithm": data["algorithm"],
            "usage": data["usage"],
            "policy": data["policy"],
            "hsm": data["hsm"],
            "description": data.get("description") or "",
            "tags": data.get("tags") or [],
        }
        if data["activation"] == self.ACTIVATE_AT:
            params["activate_at"] = iso_utc(data["activate_at"])
        elif data["activation"] == self.ACTIVATE_MANUAL:
            params["activate_at"] = None
        return params


class KeyOperationForm(RequestForm):
    """activate, rotate, suspend, resume, deactivate, compromise, schedule/cancel destruction."""


class ProcessExceptionForm(RequestForm):
    until = utc_datetime_field(
        "Allowed until", required=True, help_text="At most 30 days from now, in UTC. Only decrypt and verify."
    )
    justification = justification_field()

    def parameters(self) -> dict[str, Any]:
        return {"until": iso_utc(self.cleaned_data["until"])}


class GrantForm(RequestForm):
    grantee = forms.ChoiceField(
        label="Service account",
        error_messages={
            "required": "Choose the service account.",
            "invalid_choice": "Choose one of the listed service accounts.",
        },
    )
    operations = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Leave every box empty to revoke the service account's use of this key.",
        error_messages={"invalid_choice": "Choose operations from the list."},
    )
    justification = justification_field()

    def __init__(self, *args: Any, key: Key, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        accounts = (
            get_user_model()
            .objects.filter(is_active=True, groups__name=Role.API_CLIENT)
            .order_by("username")
            .values_list("username", flat=True)
            .distinct()
        )
        self.fields["grantee"].choices = [(name, name) for name in accounts]
        self.fields["operations"].choices = OPERATIONS_BY_USAGE.get(key.usage, [])

    def parameters(self) -> dict[str, Any]:
        return {"grantee": self.cleaned_data["grantee"], "operations": list(self.cleaned_data["operations"])}


KEY_OPERATION_FORMS: dict[str, type[RequestForm]] = {
    "activate": KeyOperationForm,
    "rotate": KeyOperationForm,
    "suspend": KeyOperationForm,
    "resume": KeyOperationForm,
    "deactivate": KeyOperationForm,
    "compromise": KeyOperationForm,
    "schedule_destruction": KeyOperationForm,
    "cancel_destruction": KeyOperationForm,
    "process_exception": ProcessExceptionForm,
    "grant": GrantForm,
}


# --- Policies -------------------------------------------------------------------------------------


def _days(label: str, *, required: bool, minimum: int, maximum: int, help_text: str = "") -> forms.IntegerField:
    return forms.IntegerField(
        label=label,
        required=required,
        min_value=minimum,
        max_value=maximum,
        help_text=help_text,
        error_messages={
            "required": f"Give the {label.lower()}.",
            "invalid": "Enter a whole number of days.",
            "min_value": f"The {label.lower()} must be at least {minimum}.",
            "max_value": f"The {label.lower()} must be at most {maximum}.",
        },
        widget=forms.NumberInput(attrs={"min": minimum, "max": maximum}),
    )


def _hours(label: str) -> forms.IntegerField:
    return forms.IntegerField(
        label=label,
        min_value=1,
        max_value=720,
        error_messages={
            "required": "Give a number of hours.",
            "invalid": "Enter a whole number of hours.",
            "min_value": "At least 1 hour.",
            "max_value": "At most 720 hours (30 days).",
        },
        widget=forms.NumberInput(attrs={"min": 1, "max": 720}),
    )


class PolicyForm(RequestForm):
    """A proposed version of a policy (or a new policy): every setting, with the current values filled in."""

    name = forms.CharField(
        max_length=64,
        help_text="Letters, digits, dots, dashes or underscores; unique.",
        error_messages={"required": "Give the new policy a name."},
    )
    description = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))
    algorithms = forms.MultipleChoiceField(
        label="Allowed algorithms",
        choices=[(name, name) for name in sorted(ALGORITHMS)],
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Allow at least one algorithm."},
    )
    originator_period_days = _days(
        "Originator-usage period",
        required=False,
        minimum=1,
        maximum=3650,
        help_text="Days a version may encrypt, sign or MAC. Empty: the NIST SP 800-57 default for the key type.",
    )
    recipient_period_days = _days(
        "Recipient-usage period",
        required=False,
        minimum=1,
        maximum=7300,
        help_text="Days a version may still decrypt or verify. Empty: the NIST SP 800-57 default.",
    )
    auto_rotate = forms.BooleanField(label="Rotate automatically before the originator period ends", required=False)
    rotation_period_days = _days(
        "Rotation period",
        required=False,
        minimum=1,
        maximum=3650,
        help_text="Days between automatic rotations (at most the originator period).",
    )
    destruction_wait_days = _days(
        "Destruction waiting period",
        required=True,
        minimum=0,
        maximum=90,
        help_text="Days between an approved destruction and the HSM destroying the key (0 to 90).",
    )
    backup = forms.ChoiceField(label="Backups", choices=BackupRule.choices)
    exportable = forms.BooleanField(label="Allow wrapped export of keys", required=False)
    keep_description = forms.BooleanField(
        label="Keep this description: it still fits the proposed settings",
        required=False,
        help_text="Tick only if you changed settings and the current description still describes them.",
    )
    justification = justification_field()

    def __init__(self, *args: Any, current: PolicyVersion | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.is_new = current is None
        self.current = current
        if current is not None:
            del self.fields["name"]
            self.fields["description"].help_text = (
                f"Version {current.number}'s description, filled in for you: rewrite it when the settings you "
                "change appear in it."
            )
            for name in (
                "description",
                "originator_period_days",
                "recipient_period_days",
                "auto_rotate",
                "rotation_period_days",
                "destruction_wait_days",
                "backup",
                "exportable",
            ):
                self.fields[name].initial = getattr(current, name)
            self.fields["algorithms"].initial = list(current.algorithms)
        else:
            del self.fields["keep_description"]  # a new policy has no description to keep
            self.fields["algorithms"].initial = sorted(ALGORITHMS)
            self.fields["destruction_wait_days"].initial = 30
            self.fields["backup"].initial = BackupRule.ALLOWED
        quorum = (current.quorum if current is not None else {}) or {}
        role_choices = [(role.value, role.label) for role in Role if role in APPROVER_ROLES]
        self.quorum_fields: list[tuple[str, list[str]]] = []
        for op in QUORUM_OPERATIONS:
            rule = quorum.get(op) or {}
            names = [f"q_{op}_approvals", f"q_{op}_roles", f"q_{op}_approve_within", f"q_{op}_execute_within"]
            self.fields[names[0]] = forms.IntegerField(
                label=f"Approvals for {op}",
                min_value=0,
                max_value=10,
                initial=rule.get("approvals", 2),
                error_messages={
                    "required": "Give the number of approvals (0 to 10).",
                    "invalid": "Enter a whole number of approvals.",
                    "min_value": "At least 0 approvals.",
                    "max_value": "At most 10 approvals.",
                },
                widget=forms.NumberInput(attrs={"min": 0, "max": 10}),
            )
            self.fields[names[1]] = forms.MultipleChoiceField(
                label=f"Approver roles for {op}",
                choices=role_choices,
                initial=rule.get("approver_roles", [Role.CUSTODIAN.value]),
                widget=forms.CheckboxSelectMultiple,
                error_messages={"required": "Choose at least one role that may approve."},
            )
            self.fields[names[2]] = _hours(f"Approve within (hours) for {op}")
            self.fields[names[2]].initial = rule.get("approve_within_hours", 72)
            self.fields[names[3]] = _hours(f"Execute within (hours) for {op}")
            self.fields[names[3]].initial = rule.get("execute_within_hours", 24)
            self.quorum_fields.append((op, names))
        # The justification comes last on the page.
        self.order_fields([name for name in self.fields if name != "justification"] + ["justification"])

    def quorum_rows(self) -> list[tuple[str, list[forms.BoundField]]]:
        return [(op, [self[name] for name in names]) for op, names in self.quorum_fields]

    def clean(self) -> dict[str, Any]:
        """Refuse a proposal that changes settings but silently keeps the old description.

        The description is filled in with the current version's text, which often restates the
        settings ("30 days before destruction"); sent unchanged with new settings it would describe
        the old ones. The proposer either rewrites it or ticks `keep_description`.
        """
        data = super().clean()
        self._check_periods(data)
        if self.current is None or self.errors or data.get("keep_description"):
            return data
        old_text = (self.current.description or "").strip()
        if not old_text or (data.get("description") or "").strip() != old_text:
            return data
        # Both sides normalised the way the policy_change action compares them.
        base = settings_of(self.current)
        try:
            proposed = clean_settings(self.parameters(), base=base)
            current = clean_settings({}, base=base)
        except ApplicationError:
            return data  # invalid settings: opening the request names the problem next to its field
        proposed.pop("description")
        current.pop("description")
        if proposed != current:
            self.add_error(
                "description",
                f"You changed settings but kept version {self.current.number}'s description, which may describe "
                "the old ones. Update it, or tick “Keep this description” if it still fits.",
            )
        return data

    def _check_periods(self, data: dict[str, Any]) -> None:
        """The periods that depend on each other, checked with the other fields so that one submit
        names every problem (policy_change checks them again: clean_settings)."""
        originator = data.get("originator_period_days")
        recipient = data.get("recipient_period_days")
        rotation = data.get("rotation_period_days")
        if originator and recipient and recipient < originator and "recipient_period_days" not in self.errors:
            self.add_error(
                "recipient_period_days", "The recipient-usage period must not be shorter than the originator period."
            )
        if originator and rotation and rotation > originator and "rotation_period_days" not in self.errors:
            self.add_error(
                "rotation_period_days",
                "The rotation period must not exceed the originator period (keys rotate before it ends).",
            )

    def parameters(self) -> dict[str, Any]:
        data = self.cleaned_data
        params: dict[str, Any] = {
            field: data.get(field)
            for field in (
                "description",
                "originator_period_days",
                "recipient_period_days",
                "auto_rotate",
                "rotation_period_days",
                "destruction_wait_days",
                "backup",
                "exportable",
            )
        }
        params["description"] = params["description"] or ""
        params["algorithms"] = sorted(data.get("algorithms") or [])
        params["quorum"] = {
            op: {
                "approvals": data[names[0]],
                "approver_roles": sorted(data[names[1]]),
                "approve_within_hours": data[names[2]],
                "execute_within_hours": data[names[3]],
            }
            for op, names in self.quorum_fields
        }
        if self.is_new:
            params["name"] = data["name"].strip()
        return params


# --- People and HSMs ------------------------------------------------------------------------------


class RoleChangeForm(RequestForm):
    roles = forms.MultipleChoiceField(
        label="Roles after the change",
        required=False,
        choices=Role.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="Tick every role the person should hold; none removes all their roles. An auditor holds no other role.",
        error_messages={"invalid_choice": "Choose roles from the list."},
    )
    justification = justification_field()

    def parameters(self) -> dict[str, Any]:
        return {"roles": sorted(self.cleaned_data["roles"])}


class HsmRegisterForm(RequestForm):
    name = forms.CharField(
        max_length=64,
        help_text="How the console names this HSM, e.g. hsm-dc2.",
        error_messages={"required": "Give the HSM a name."},
    )
    module = forms.CharField(
        label="PKCS#11 module",
        max_length=500,
        help_text="Absolute path of the PKCS#11 library on the server.",
        error_messages={"required": "Give the path of the PKCS#11 module."},
    )
    token_label = forms.CharField(
        label="Token label",
        max_length=32,
        help_text="The token is always chosen by its label, never by slot number.",
        error_messages={"required": "Give the token's label."},
    )
    pin_env = forms.CharField(
        label="PIN environment variable",
        required=False,
        max_length=64,
        help_text="Name of the environment variable the worker reads the user PIN from. The PIN itself never goes into the console.",
    )
    pin_file = forms.CharField(
        label="PIN file",
        required=False,
        max_length=500,
        help_text="Or: absolute path of a file holding the PIN.",
    )
    location = forms.CharField(required=False, max_length=200, help_text="Where the device is, for the inventory.")
    justification = justification_field()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["module"].initial = settings.KMS_PKCS11_MODULE

    def parameters(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "action": "register",
            "name": data["name"].strip(),
            "module": data["module"].strip(),
            "token_label": data["token_label"],
            "pin_env": data["pin_env"].strip(),
            "pin_file": data["pin_file"].strip(),
            "location": data["location"].strip(),
        }
