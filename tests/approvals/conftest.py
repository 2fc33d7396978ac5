"""Fixtures of the dual-control tests."""

from __future__ import annotations

from typing import Any

import pytest

from approvals.models import ApprovalRequest
from tests.approvals.helpers import open_generation
from tests.lifecycle.conftest import cast  # noqa: F401  (the whole cast in one namespace)


@pytest.fixture
def pending(alice: Any, bob: Any, carol: Any, dave: Any, clock: Any) -> ApprovalRequest:
    """alice's pending generation request (opened at the frozen start time); bob, carol and dave are
    the custodians who may approve it."""
    return open_generation(alice)
