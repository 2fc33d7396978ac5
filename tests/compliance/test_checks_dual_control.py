"""Dual control: executed requests carried their quorum; policies ask for it; destruction waits."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from compliance.checks.base import FAIL, NOT_APPLICABLE, PASS, WARN
from lifecycle.services.policies import policy_apply
from tests.lifecycle.helpers import generate_key, run_operation

from .helpers import approved_request, orm_key, run

pytestmark = pytest.mark.django_db


def test_dual_control_passes_for_requests_run_through_the_engine(clock: Any, cast: Any) -> None:
    key = generate_key(cast.alice, [cast.bob, cast.carol], clock, name="engine-made")
    # Suspension acts at once (quorum 0) and opens its mandatory review: not a violation.
    run_operation("suspend", key, cast.alice, [], clock)

    result = run("dual_control")

    assert result.status == PASS, result.offenders
    assert result.figure == (
        "2 of 2 approved requests ran after their quorum of distinct eligible approvers other than the requester"
    )


def test_dual_control_is_not_applicable_before_anything_ran(cast: Any) -> None:
    assert run("dual_control").status == NOT_APPLICABLE


def test_dual_control_fails_for_a_request_short_of_its_quorum(clock: Any, cast: Any) -> None:
    req = approved_request(
        "schedule_destruction",
        requester=cast.alice,
        approvers=[cast.bob],
        required=2,
        now=clock.now(),
        target_label="payments",
    )

    result = run("dual_control")

    assert result.status == FAIL
    assert result.figure.startswith("0 of 1 approved requests ran after their quorum")
    [offender] = result.offenders
    assert offender.label == f"schedule_destruction of payments ({str(req.pk)[:8]})"
    assert offender.reason == "ran with 1 valid approval(s) of the 2 required"
    assert offender.url == reverse("approvals:request_detail", args=[req.pk])


def test_approvals_of_another_digest_or_by_an_ineligible_role_do_not_count(clock: Any, cast: Any) -> None:
    approved_request(
        "generate",
        requester=cast.alice,
        approvers=[cast.bob, cast.carol],
        required=2,
        now=clock.now(),
        digest_override={cast.carol.pk: "0" * 64},
    )
    approved_request("generate", requester=cast.alice, approvers=[cast.bob, cast.olivia], required=2, now=clock.now())

    result = run("dual_control")

    assert result.status == FAIL
    reasons = sorted(o.reason for o in result.offenders)
    assert reasons == [
        "ran with 1 valid approval(s) of the 2 required; carol approved a different digest",
        "ran with 1 valid approval(s) of the 2 required; olivia held none of the roles custodian",
    ]


def test_dual_control_warns_for_weak_but_policy_conformant_requests(clock: Any, cast: Any) -> None:
    now = clock.now()
    approved_request("rotate", requester=cast.alice, approvers=[], required=0, now=now, target_label="a")
    approved_request("suspend", requester=cast.alice, approvers=[], required=0, now=now, target_label="b")
    approved_request("export", requester=cast.alice, approvers=[cast.bob], required=1, now=now, target_label="c")

    result = run("dual_control")

    assert result.status == WARN
    assert result.figure.startswith("3 of 3 approved requests ran after their quorum")
    reasons = {o.label.split(" (")[0]: o.reason for o in result.offenders}
    assert reasons == {
        "rotate of a": "ran without any approval (only suspend and compromise may act at once)",
        "suspend of b": "acted at once but no mandatory review was opened",
        "export of c": "its policy (standard v1) allowed 1 approval(s) where two are expected",
    }


def test_policy_rules_pass_for_the_standard_policy(kms: Any) -> None:
    result = run("policy_rules")
    assert result.status == PASS
    assert result.figure.startswith("1 of 1 policies require two approvals")


def test_policy_rules_warn_for_a_policy_that_lowers_dual_control(clock: Any, cast: Any) -> None:
    lax = policy_apply(
        name="lax",
        settings={"quorum": {"schedule_destruction": {"approvals": 1}, "activate": {"approvals": 0}}},
        actor=None,
    )
    orm_key("governed", kms=cast.kms, owner=cast.alice, now=clock.now(), policy=lax.policy)

    result = run("policy_rules")

    assert result.status == WARN
    assert result.figure.startswith("1 of 2 policies require two approvals")
    assert {(o.label, o.reason) for o in result.offenders} == {
        (lax.ref, "'activate' runs without any approval; governs 1 key"),
        (lax.ref, "'schedule_destruction' needs only 1 approval (two are expected); governs 1 key"),
    }
    assert all(o.url == reverse("lifecycle:policy_detail", args=["lax"]) for o in result.offenders)


def test_destruction_wait_passes_with_a_waiting_period(kms: Any) -> None:
    result = run("destruction_wait")
    assert result.status == PASS
    assert result.figure == "1 of 1 policies keep a waiting period before destruction (shortest: 30 days)"


def test_destruction_wait_flags_a_policy_with_no_waiting_period(clock: Any, cast: Any) -> None:
    hasty = policy_apply(name="hasty", settings={"destruction_wait_days": 0}, actor=None)
    orm_key("a", kms=cast.kms, owner=cast.alice, now=clock.now(), policy=hasty.policy)
    orm_key("b", kms=cast.kms, owner=cast.alice, now=clock.now(), policy=hasty.policy)

    result = run("destruction_wait")

    assert result.status == WARN
    assert result.figure == "1 of 2 policies keep a waiting period before destruction (shortest: 0 days)"
    [offender] = result.offenders
    assert offender.label == hasty.ref
    assert offender.reason == "destroys keys as soon as destruction is approved (0-day waiting period); governs 2 keys"
