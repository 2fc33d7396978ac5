"""Forms of the backup pages: shapes only; every rule is checked by the services and the engine."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model

from kms_console.lib.roles import Role

from ..hsm.base import USAGE_WRAP_UNWRAP
from ..models import Hsm, Key
from ..states import KeyState
from .escrow import KEK_ALGORITHM

JUSTIFICATION_HELP = "Why is this needed? Approvers read this; it is kept in the audit trail."


def _justification() -> forms.CharField:
    return forms.CharField(
        label="Justification", max_length=2000, widget=forms.Textarea(attrs={"rows": 3}), help_text=JUSTIFICATION_HELP
    )


class OneTimeCodeInput(forms.TextInput):
    """A one-time code is spent (or burnt by a failure) once it is submitted: a page shown again
    after a refusal never puts it back into the field."""

    def format_value(self, value: Any) -> None:
        return None


class SecretTextarea(forms.Textarea):
    """A share is a secret: a page shown again after a refusal does not echo it back."""

    def format_value(self, value: Any) -> None:
        return None


def _otp() -> forms.CharField:
    return forms.CharField(
        label="One-time code",
        max_length=12,
        widget=OneTimeCodeInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
        help_text="The 6-digit code your authenticator shows now.",
    )


class EscrowForm(forms.Form):
    kek = forms.ModelChoiceField(
        label="Backup KEK",
        queryset=Key.objects.none(),
        help_text="An active AES-256 key for wrap_unwrap. Its current version is escrowed.",
    )
    custodians = forms.ModelMultipleChoiceField(
        label="Share holders", queryset=get_user_model().objects.none(), widget=forms.CheckboxSelectMultiple
    )
    threshold = forms.IntegerField(
        label="Shares needed to recover", min_value=2, max_value=10, initial=2, help_text="M of the N holders."
    )
    justification = _justification()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["kek"].queryset = Key.objects.filter(
            algorithm=KEK_ALGORITHM, usage=USAGE_WRAP_UNWRAP, state=KeyState.ACTIVE
        ).order_by("name")
        self.fields["custodians"].queryset = (
            get_user_model().objects.filter(is_active=True, groups__name=Role.CUSTODIAN).distinct().order_by("username")
        )


class ShareRetrieveForm(forms.Form):
    otp = _otp()
    delivery = forms.ChoiceField(
        label="How do you want it?",
        choices=[("show", "Show it on screen once"), ("download", "Download it once as a text file")],
        initial="show",
        widget=forms.RadioSelect,
    )


class ShareEntryForm(forms.Form):
    share = forms.CharField(
        label="Your share",
        max_length=400,
        widget=SecretTextarea(attrs={"rows": 3, "autocomplete": "off", "spellcheck": "false"}),
        help_text="The whole line you were given, starting with kms-share:.",
    )
    otp = _otp()


class BackupRequestForm(forms.Form):
    version = forms.IntegerField(label="Version", min_value=1, required=False, help_text="Empty: the primary version.")
    justification = _justification()


class ExportRequestForm(forms.Form):
    recipient = forms.CharField(label="Recipient", max_length=200, help_text="Who receives the key.")
    recipient_public_key = forms.CharField(
        label="Recipient's RSA public key (PEM)",
        max_length=10_000,
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}),
        help_text="At least 2048 bits. Only the holder of its private key can open the export.",
    )
    version = forms.IntegerField(label="Version", min_value=1, required=False, help_text="Empty: the primary version.")
    justification = _justification()


class RestoreRequestForm(forms.Form):
    hsm = forms.ModelChoiceField(
        label="Restore into HSM", queryset=Hsm.objects.none(), to_field_name="name", required=False
    )
    justification = _justification()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["hsm"].queryset = Hsm.objects.filter(retired_at__isnull=True).order_by("name")
        self.fields["hsm"].empty_label = "The HSM the version lives on"
