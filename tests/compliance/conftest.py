"""Fixtures of the compliance tests: the cast as one namespace, and the browser set-up of tests/ui."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

# Playwright on Debian's Chromium, configured once in tests/ui (fixtures are found by name here).
from tests.ui.conftest import browser_context_args, browser_type_launch_args  # noqa: F401


@pytest.fixture
def catalog(db: Any) -> None:
    """The catalog the data migration loads. Transactional tests flush every table when they end
    (migration data included), so tests that run after one load it again."""
    from django.conf import settings

    from compliance.catalog import read_catalog, sync_catalog
    from compliance.models import Control, Framework

    if not Control.objects.exists():
        sync_catalog(read_catalog(settings.KMS_CONTROLS_FILE), Framework, Control)


@pytest.fixture
def cast(kms: Any, alice: Any, bob: Any, carol: Any, dave: Any, olivia: Any, erin: Any, mallory: Any, svc: Any) -> Any:
    return SimpleNamespace(
        kms=kms, alice=alice, bob=bob, carol=carol, dave=dave, olivia=olivia, erin=erin, mallory=mallory, svc=svc
    )
