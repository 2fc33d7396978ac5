"""Issue 4: no path around dual control - not the Django admin (read-only for everybody, superusers
included) and not a management command."""

from __future__ import annotations

import importlib
import inspect
import io
import re
from typing import Any

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command, get_commands
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from approvals.models import ApprovalRequest, Decision, RequestState
from audit.models import AuditEvent
from lifecycle.models import Job, Key, KeyVersion, Policy, PolicyVersion
from tests.approvals.helpers import open_generation
from tests.conftest import approve, make_user, web_client
from tests.lifecycle.helpers import generate_key

pytestmark = pytest.mark.django_db

OUR_APPS = ("accounts", "approvals", "audit", "compliance", "lifecycle")
# The dual-control engine's calls that record decisions or run a request's step.
EXECUTING_CALLS = re.compile(r"\b(decide|retry|mark_executed|_execute|_reach_quorum|_finish|_record_decision)\(")


@pytest.fixture
def root(kms: Any) -> Any:
    """A superuser who is also a custodian (acknowledged, with a confirmed TOTP device)."""
    user = make_user("root", {"custodian", "key_admin"})
    user.is_superuser = user.is_staff = True
    user.save()
    return user


@pytest.fixture
def admin_client(root: Any) -> Any:
    return web_client(root)


def state_of_everything() -> tuple[Any, ...]:
    return (
        list(
            ApprovalRequest.objects.order_by("pk").values_list("pk", "state", "required_approvals", "execution_count")
        ),
        list(Decision.objects.order_by("pk").values_list("pk", "approver_id", "decision")),
        list(Key.objects.order_by("pk").values_list("pk", "state", "destroy_after")),
        list(KeyVersion.objects.order_by("pk").values_list("pk", "state")),
        list(PolicyVersion.objects.order_by("pk").values_list("pk", "is_current", "quorum")),
        list(Job.objects.order_by("pk").values_list("pk", "status")),
        list(Group.objects.order_by("pk").values_list("pk", "name")),
        sorted((user.username, sorted(g.name for g in user.groups.all())) for user in get_user_model().objects.all()),
        list(TOTPDevice.objects.order_by("pk").values_list("pk", "user_id", "key", "confirmed")),
        AuditEvent.objects.exclude(action__startswith="auth.").count(),
    )


def test_every_model_of_the_console_is_registered_read_only() -> None:
    registered = admin.site._registry
    for label in OUR_APPS:
        for model in apps.get_app_config(label).get_models():
            model_admin = registered[model]
            request = None
            assert not model_admin.has_add_permission(request), model
            assert not model_admin.has_change_permission(request), model
            assert not model_admin.has_delete_permission(request), model
            assert model_admin.actions is None, model
    for model in (Group, TOTPDevice, apps.get_model("auth", "User")):
        assert not registered[model].has_change_permission(None)


def test_a_superuser_posting_to_the_admin_changes_nothing(
    admin_client: Any, root: Any, alice: Any, bob: Any, carol: Any, clock: Any
) -> None:
    key = generate_key(alice, [bob, carol], clock)
    pending = open_generation(root, "root-key")
    policy = Policy.objects.get(name="standard").current
    job = Job.objects.get(key=key)
    event = AuditEvent.objects.order_by("seq").last()
    before = state_of_everything()

    posts = [
        # Approve or execute a request by editing it.
        (reverse("admin:approvals_approvalrequest_change", args=[pending.pk]), {"state": "executed", "required_approvals": 0}),
        (reverse("admin:approvals_approvalrequest_delete", args=[pending.pk]), {"post": "yes"}),
        (reverse("admin:approvals_approvalrequest_add"), {"operation": "generate", "state": "approved"}),
        # Add a decision by hand.
        (reverse("admin:approvals_decision_add"), {"request": pending.pk, "approver": bob.pk, "requester": root.pk, "decision": "approve"}),
        # Change a key, a version, a policy's quorum, a job, the audit trail.
        (reverse("admin:lifecycle_key_change", args=[key.pk]), {"state": "destroyed", "name": "k"}),
        (reverse("admin:lifecycle_key_delete", args=[key.pk]), {"post": "yes"}),
        (reverse("admin:lifecycle_keyversion_change", args=[key.primary_version.pk]), {"state": "compromised"}),
        (reverse("admin:lifecycle_policyversion_change", args=[policy.pk]), {"quorum": "{}", "is_current": "on"}),
        (reverse("admin:lifecycle_job_change", args=[job.pk]), {"status": "queued"}),
        (reverse("admin:audit_auditevent_delete", args=[event.seq]), {"post": "yes"}),
        # Give yourself (or someone) roles, a device, a password.
        (reverse("admin:auth_user_change", args=[root.pk]), {"username": "root", "groups": [g.pk for g in Group.objects.all()]}),
        (reverse("admin:auth_group_add"), {"name": "custodian2"}),
        (reverse("admin:otp_totp_totpdevice_add"), {"user": bob.pk, "name": "mine", "key": "00" * 20, "confirmed": "on"}),
        # Bulk actions on a changelist.
        (reverse("admin:approvals_approvalrequest_changelist"), {"action": "delete_selected", "_selected_action": [pending.pk], "post": "yes"}),
        (reverse("admin:lifecycle_key_changelist"), {"action": "delete_selected", "_selected_action": [key.pk], "post": "yes"}),
    ]  # fmt: skip
    changelists = {
        reverse("admin:approvals_approvalrequest_changelist"),
        reverse("admin:lifecycle_key_changelist"),
    }
    for url, data in posts:
        response = admin_client.post(url, data)
        # A changelist without actions shows itself again; every other write is forbidden outright.
        assert response.status_code == (200 if url in changelists else 403), (url, response.status_code)
    assert state_of_everything() == before
    pending.refresh_from_db()
    assert (pending.state, pending.decisions.count()) == (RequestState.PENDING, 0)


def test_the_admin_still_shows_records_but_no_secrets(admin_client: Any, bob: Any, alice: Any, clock: Any) -> None:
    pending = open_generation(alice)
    response = admin_client.get(reverse("admin:approvals_approvalrequest_change", args=[pending.pk]))
    assert response.status_code == 200
    assert pending.digest in response.content.decode()
    device = TOTPDevice.objects.get(user=bob)
    page = admin_client.get(reverse("admin:otp_totp_totpdevice_change", args=[device.pk])).content.decode()
    assert device.key not in page
    page = admin_client.get(reverse("admin:auth_user_change", args=[bob.pk])).content.decode()
    assert bob.password not in page
    # The writable admins' extra pages are gone: no QR code of a TOTP secret, no password reset.
    assert admin_client.get(f"/admin/otp_totp/totpdevice/{device.pk}/config/").status_code in {302, 404}
    assert admin_client.get(f"/admin/auth/user/{bob.pk}/password/").status_code in {302, 404}
    assert admin_client.get(reverse("admin:approvals_approvalrequest_add")).status_code == 403


def our_commands() -> dict[str, str]:
    return {name: app for name, app in get_commands().items() if app in OUR_APPS}


def test_no_management_command_decides_or_executes_a_request() -> None:
    commands = our_commands()
    assert {"kms_user", "kms_token", "kms_setup", "kms_hsm", "kms_audit"} <= set(commands)
    for name, app in commands.items():
        source = inspect.getsource(importlib.import_module(f"{app}.management.commands.{name}"))
        assert not EXECUTING_CALLS.search(source), f"{name} calls into the engine's decision or execution path"


def test_running_the_operator_commands_leaves_pending_requests_pending(
    root: Any, alice: Any, bob: Any, carol: Any, clock: Any
) -> None:
    open_generation(root, "root-key")
    half = open_generation(alice, "half")
    approve(half, bob, clock=clock)
    before = (
        list(ApprovalRequest.objects.order_by("pk").values_list("pk", "state", "execution_count")),
        Decision.objects.count(),
        Key.objects.count(),
        Job.objects.count(),
    )
    out = io.StringIO()
    call_command("kms_setup", stdout=out, stderr=out)
    call_command("kms_hsm", "status", stdout=out, stderr=out)
    call_command("kms_user", "create", "root", "--role", "custodian", "--role", "key_admin", stdout=out, stderr=out)
    call_command("kms_user", "acknowledge", "root", stdout=out, stderr=out)
    call_command("kms_token", "create", "--user", "root", stdout=out, stderr=out)
    call_command("kms_audit", "verify", stdout=out, stderr=out)
    after = (
        list(ApprovalRequest.objects.order_by("pk").values_list("pk", "state", "execution_count")),
        Decision.objects.count(),
        Key.objects.count(),
        Job.objects.count(),
    )
    assert after == before
