"""Forms of the compliance pages: the control filter and the audit review note."""

from __future__ import annotations

from django import forms

from .catalog import LIFECYCLE_PHASES
from .checks.base import CONTROL_STATUSES, STATUS_LABELS
from .services import MAX_NOTE


class ControlFilterForm(forms.Form):
    status = forms.ChoiceField(
        required=False,
        choices=[("", "Any status"), *((s, STATUS_LABELS[s]) for s in CONTROL_STATUSES)],
        error_messages={"invalid_choice": "Choose a status from the list."},
    )
    phase = forms.ChoiceField(
        required=False,
        label="Lifecycle phase",
        choices=[("", "Any phase"), *((p, p.replace("_", " ").capitalize()) for p in LIFECYCLE_PHASES)],
        error_messages={"invalid_choice": "Choose a lifecycle phase from the list."},
    )


class AuditReviewForm(forms.Form):
    note = forms.CharField(
        required=False,
        max_length=MAX_NOTE,
        label="Note",
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="What you looked at and what follows from it (kept in the audit trail).",
        error_messages={"max_length": f"Keep the note under {MAX_NOTE} characters."},
    )
