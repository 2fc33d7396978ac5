"""The approve/reject form of a request page. The dual-control engine (`approvals.services.decide`)
checks everything that matters; this form only checks that the input has the right shape."""

from __future__ import annotations

import re

from django import forms

from .models import Decision
from .services import MAX_COMMENT


class DecisionForm(forms.Form):
    # The digest the page showed: deciding on a request that changed since is refused.
    digest = forms.CharField(
        widget=forms.HiddenInput,
        max_length=64,
        error_messages={"required": "The page did not send the request's digest; reload the request and try again."},
    )
    otp = forms.CharField(
        label="Your one-time code",
        max_length=20,
        error_messages={"required": "Enter the 6-digit code from your authenticator app to confirm your decision."},
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "inputmode": "numeric",
                "class": "code-input",
                "placeholder": "123456",
            }
        ),
    )
    comment = forms.CharField(
        required=False,
        max_length=MAX_COMMENT,
        help_text="Required when you reject: say why.",
        error_messages={"max_length": f"Keep the comment under {MAX_COMMENT} characters."},
        widget=forms.Textarea(attrs={"rows": 2}),
    )
    decision = forms.ChoiceField(
        choices=Decision.Kind.choices,
        widget=forms.HiddenInput,
        error_messages={
            "required": "Choose Approve or Reject.",
            "invalid_choice": "Choose Approve or Reject.",
        },
    )

    def clean_otp(self) -> str:
        code = re.sub(r"\s+", "", self.cleaned_data["otp"])
        if not re.fullmatch(r"\d{6}", code):
            raise forms.ValidationError("The code has exactly 6 digits; enter the one your authenticator app shows.")
        return code

    def clean(self) -> dict[str, str]:
        data = super().clean()
        if data.get("decision") == Decision.Kind.REJECT and not (data.get("comment") or "").strip():
            self.add_error("comment", "Say why you reject the request: a comment is required for a rejection.")
        return data
