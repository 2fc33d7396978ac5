"""Destruction: scheduled first (waiting period from the policy), cancellable, then carried out on the HSM
by the sweep; the token keeps no object of the key, the database keeps its metadata and a certificate."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from approvals.models import RequestState
from approvals.services import open_request
from kms_console.lib.canonical import canonical_json, sha256_hex
from kms_console.lib.errors import Conflict
from lifecycle.models import DestructionCertificate, Job, JobKind, JobStatus, KeyTransition
from lifecycle.services import jobs
from lifecycle.states import KeyState
from lifecycle.sweep import sweep
from lifecycle.usage import usage_denial
from tests.conftest import approve
from tests.lifecycle.helpers import (
    ASYMMETRIC,
    KEY_TYPE_IDS,
    KEY_TYPES,
    destroy_now,
    generate_key,
    make_policy,
    run_operation,
    run_sweep,
    token_ids,
    token_objects,
    wait_out_destruction,
)

pytestmark = pytest.mark.django_db


def test_scheduling_sets_destroy_after_from_the_waiting_period_and_nothing_may_use_the_key(
    cast: Any, clock: Any
) -> None:
    key = generate_key(cast.alice, cast.approvers, clock)
    version = key.primary_version
    req = run_operation("schedule_destruction", key, cast.alice, cast.approvers, clock)

    assert req.required_approvals == 2
    assert req.state == RequestState.EXECUTED
    assert key.destroy_after == clock.now() + dt.timedelta(days=30)
    assert key.destruction_request_id == req.pk
    assert key.state == KeyState.ACTIVE  # the state changes when the worker destroys it
    for operation in ("encrypt", "decrypt"):
        assert usage_denial(key, version, operation, clock.now()) == (
            "key k is scheduled for destruction and may not be used"
        )
    assert version.cka_id in token_ids()

    clock.advance(days=30, seconds=-1)
    assert run_sweep(clock)["destructions_started"] == 0
    key.refresh_from_db()
    assert key.state == KeyState.ACTIVE
    assert version.cka_id in token_ids()

    clock.advance(seconds=1)
    assert run_sweep(clock)["destructions_started"] == 1
    key.refresh_from_db()
    assert key.state == KeyState.DESTROYED
    assert version.cka_id not in token_ids()


def test_while_the_destruction_waits_only_compromise_and_cancel_are_accepted(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock)
    run_operation("schedule_destruction", key, cast.alice, cast.approvers, clock)
    for operation in ("rotate", "suspend", "deactivate", "schedule_destruction"):
        with pytest.raises(Conflict, match="scheduled for destruction"):
            open_request(operation=operation, requester=cast.alice, justification="no", target_id=str(key.pk))
    compromised = run_operation("compromise", key, cast.bob, cast.approvers, clock)
    assert compromised.state == RequestState.EXECUTED
    assert key.state == KeyState.COMPROMISED
    assert key.destroy_after is not None  # the schedule stands
    wait_out_destruction(key, clock)
    assert key.state == KeyState.DESTROYED
    assert KeyTransition.objects.filter(key=key, version__isnull=True, nist_transition=15).exists()


def test_cancelling_inside_the_window_keeps_the_key_and_returns_it_to_use(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock)
    version = key.primary_version
    run_operation("schedule_destruction", key, cast.alice, cast.approvers, clock)
    clock.advance(days=29)
    cancel = run_operation("cancel_destruction", key, cast.alice, cast.approvers, clock)

    assert cancel.required_approvals == 1
    assert cancel.state == RequestState.EXECUTED
    assert (key.destroy_after, key.destruction_request_id) == (None, None)
    assert usage_denial(key, version, "encrypt", clock.now()) is None
    clock.advance(days=10)
    assert run_sweep(clock)["destructions_started"] == 0
    key.refresh_from_db()
    assert key.state == KeyState.ACTIVE
    assert version.cka_id in token_ids()
    assert not Job.objects.filter(key=key, kind=JobKind.DESTROY).exists()


def test_cancelling_is_refused_when_nothing_is_scheduled(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock)
    with pytest.raises(Conflict, match="not scheduled for destruction"):
        open_request(operation="cancel_destruction", requester=cast.alice, justification="no", target_id=str(key.pk))


def test_cancelling_after_the_destruction_started_on_the_hsm_is_refused_and_the_key_stays_scheduled(
    cast: Any, clock: Any
) -> None:
    key = generate_key(cast.alice, cast.approvers, clock)
    run_operation("schedule_destruction", key, cast.alice, cast.approvers, clock)
    clock.advance(days=29, hours=23)
    cancel = open_request(
        operation="cancel_destruction", requester=cast.alice, justification="just in time?", target_id=str(key.pk)
    )
    clock.advance(hours=1, seconds=1)
    sweep(clock.now())  # the destroy job is queued (not run: this test's transaction never commits)
    assert Job.objects.get(key=key, kind=JobKind.DESTROY).status == JobStatus.QUEUED

    # A request opened before the job started fails when approved; a new one is refused outright.
    cancel = approve(cancel, cast.bob, clock=clock)
    assert cancel.state == RequestState.FAILED
    assert "can no longer be cancelled" in cancel.error
    with pytest.raises(Conflict, match="can no longer be cancelled"):
        open_request(operation="cancel_destruction", requester=cast.alice, justification="no", target_id=str(key.pk))
    key.refresh_from_db()
    assert key.destroy_after is not None


def test_with_a_waiting_period_of_zero_the_approved_request_destroys_at_once(cast: Any, clock: Any) -> None:
    make_policy("no-wait", destruction_wait_days=0)
    key = generate_key(cast.alice, cast.approvers, clock, policy="no-wait")
    cka_id = key.primary_version.cka_id
    req = run_operation("schedule_destruction", key, cast.alice, cast.approvers, clock)
    assert req.state == RequestState.EXECUTED
    assert key.state == KeyState.DESTROYED
    assert key.destroyed_at == clock.now()
    assert cka_id not in token_ids()


@pytest.mark.parametrize(("algorithm", "usage"), KEY_TYPES, ids=KEY_TYPE_IDS)
def test_after_destruction_the_token_holds_no_cka_id_of_the_key_and_the_certificate_remains(
    cast: Any, clock: Any, algorithm: str, usage: str
) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, algorithm=algorithm, usage=usage)
    run_operation("rotate", key, cast.alice, cast.approvers, clock)  # two versions: two objects (pairs)
    versions = list(key.versions.order_by("number"))
    cka_ids = [v.cka_id for v in versions]
    for cka_id in cka_ids:  # both halves of each pair are on the token
        assert token_objects(cka_id) == (["private_key", "public_key"] if algorithm in ASYMMETRIC else ["secret_key"])

    req = destroy_now(key, cast.alice, [cast.carol, cast.dave], clock)

    assert key.state == KeyState.DESTROYED
    assert not set(cka_ids) & token_ids()  # neither half of any version is left
    # Metadata stays: the key, its versions (with CKA_IDs, KCVs, public keys) and their history.
    key.refresh_from_db()
    assert (key.name, key.algorithm, key.usage) == ("k", algorithm, usage)
    for version in key.versions.order_by("number"):
        assert version.state == KeyState.DESTROYED
        assert version.destroyed_at == clock.now()
        assert version.kcv
        assert bool(version.public_key_pem) is (algorithm in ASYMMETRIC)
    certificate = DestructionCertificate.objects.get(key=key)
    body = certificate.body
    assert certificate.digest == sha256_hex(canonical_json(body))
    assert body["request"]["id"] == str(req.pk)
    assert body["request"]["requester"] == "alice"
    assert [(d["approver"], d["decision"]) for d in body["request"]["decisions"]] == [
        ("carol", "approve"),
        ("dave", "approve"),
    ]
    assert [(v["version"], v["cka_id"], v["kcv"], v["confirmed_absent"]) for v in body["versions"]] == [
        (v.number, v.cka_id, v.kcv, True) for v in versions
    ]
    assert all(v["objects_destroyed"] == (2 if algorithm in ASYMMETRIC else 1) for v in body["versions"])
    assert body["destroyed_at"] == clock.now().isoformat()
    assert "secret" not in canonical_json(body).lower()


def test_a_redelivered_destroy_job_does_nothing_more(cast: Any, clock: Any) -> None:
    key = generate_key(cast.alice, cast.approvers, clock, algorithm="RSA-2048", usage="sign_verify")
    destroy_now(key, cast.alice, cast.approvers, clock)
    job = Job.objects.get(key=key, kind=JobKind.DESTROY)
    transitions = KeyTransition.objects.filter(key=key).count()

    jobs.run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 1)
    assert KeyTransition.objects.filter(key=key).count() == transitions
    assert DestructionCertificate.objects.filter(key=key).count() == 1
    # And the sweep never starts a second destruction of a destroyed key.
    clock.advance(days=1)
    assert run_sweep(clock)["destructions_started"] == 0
