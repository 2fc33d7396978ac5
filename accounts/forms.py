"""Forms of the sign-in pages. They check the shape of what was typed; the services decide."""

from __future__ import annotations

import re
from typing import Any

from django import forms

CODE_RE = re.compile(r"^\d{6}$")


class LoginForm(forms.Form):
    username = forms.CharField(
        max_length=150,
        error_messages={"required": "Enter your username."},
        widget=forms.TextInput(attrs={"autocomplete": "username", "autofocus": True, "autocapitalize": "none"}),
    )
    password = forms.CharField(
        max_length=4096,
        strip=False,
        error_messages={"required": "Enter your password."},
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )


class CodeForm(forms.Form):
    """A 6-digit TOTP code; spaces are ignored (authenticator apps show "123 456")."""

    code = forms.CharField(
        label="Code from your authenticator app",
        max_length=20,
        error_messages={"required": "Enter the 6-digit code that your authenticator app shows."},
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "inputmode": "numeric",
                "autofocus": True,
                "class": "code-input",
                "placeholder": "123456",
            }
        ),
    )

    def clean_code(self) -> str:
        code = re.sub(r"\s+", "", self.cleaned_data["code"])
        if not CODE_RE.match(code):
            raise forms.ValidationError("The code has exactly 6 digits; enter the one your authenticator app shows.")
        return code


class AcknowledgeForm(forms.Form):
    accept = forms.BooleanField(
        label="I have read these responsibilities and accept them.",
        error_messages={"required": "Tick the box to confirm that you accept these responsibilities."},
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["accept"].widget.attrs["id"] = "id_accept"
