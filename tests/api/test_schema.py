"""The OpenAPI document: it validates with warnings as failures, it is served, and a property-based
run of schemathesis against it (in-process, bounded) finds no 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import schemathesis
import yaml
from django.core.handlers.wsgi import WSGIHandler
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode

from accounts.throttling import TokenRateThrottle
from lifecycle.models import Key
from tests.api.conftest import API
from tests.conftest import api_client

pytestmark = pytest.mark.django_db

# Bounded: about 150 runs of a few examples each, a minute or two in all.
EXAMPLES_PER_OPERATION = 8


def test_the_schema_validates_with_warnings_as_failures(tmp_path: Any) -> None:
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    paths = schema["paths"]
    # The SPEC §10 paths are all there, with their documented answers.
    for path in (
        "/api/v1/keys/",
        "/api/v1/keys/{id}/",
        "/api/v1/keys/{id}/versions/",
        "/api/v1/keys/{id}/timeline/",
        "/api/v1/keys/{id}/encrypt/",
        "/api/v1/keys/{id}/decrypt/",
        "/api/v1/keys/{id}/sign/",
        "/api/v1/keys/{id}/verify/",
        "/api/v1/keys/{id}/mac/",
        "/api/v1/keys/{id}/verify-mac/",
        "/api/v1/keys/{id}/schedule-destruction/",
        "/api/v1/keys/{id}/cancel-destruction/",
        "/api/v1/requests/",
        "/api/v1/requests/{id}/approve/",
        "/api/v1/requests/{id}/reject/",
        "/api/v1/requests/{id}/cancel/",
        "/api/v1/jobs/{id}/",
        "/api/v1/hsms/",
        "/api/v1/custodians/",
        "/api/v1/policies/",
        "/api/v1/tokens/",
    ):
        assert path in paths, path
    create = paths["/api/v1/keys/"]["post"]
    assert set(create["responses"]) >= {"201", "202", "400", "401", "403", "409"}
    assert create["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    rotate = paths["/api/v1/keys/{id}/rotate/"]["post"]["responses"]
    assert {"200", "202", "404"} <= set(rotate)
    assert set(schema["components"]["securitySchemes"]) == {"tokenAuth", "consoleSession"}


def test_the_schema_and_its_docs_are_served(client: Any) -> None:
    assert client.get("/api/schema/").status_code == 200
    assert client.get("/api/schema/?format=json").json()["info"]["title"] == "KMS lifecycle console API"
    assert client.get("/api/docs/").status_code == 200


def test_the_docs_page_loads_everything_from_our_own_origin(client: Any) -> None:
    """Swagger UI comes from vendored static files and its start-up script is a same-origin file, so
    the page works offline and under `script-src 'self'` (no inline script, no CDN)."""
    import re

    page = client.get("/api/docs/")
    html = page.content.decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(src.startswith("/") for src in sources), sources
    assert not re.search(r"<script>(?!</script>)", html)  # every script tag has a src
    assert "script-src 'self';" in page["Content-Security-Policy"]
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")


@pytest.fixture
def wsgi_app() -> Iterator[WSGIHandler]:
    """Django's WSGI handler, kept from closing the test's database connection between requests
    (as Django's own test client does: the test's transaction must outlive every request)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield WSGIHandler()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.mark.slow
def test_a_property_based_run_against_the_schema_finds_no_server_error(
    cast: SimpleNamespace, aes_key: Key, clock: Any, monkeypatch: Any, wsgi_app: WSGIHandler
) -> None:
    """Every operation, with valid and invalid inputs, as a key_admin; key paths also get a real key.

    Runs in-process through Django's WSGI handler (same thread, same test database). Time is
    frozen, so the per-token rate limit is lifted for the run.
    """
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"token": "1000000/min"})
    client = api_client(cast.alice)
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", wsgi_app)
    headers = {"Authorization": f"Token {client.raw_token}"}
    failures: list[str] = []
    statuses: dict[int, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30

    for operation in operations:
        runs: list[tuple[dict[str, Any], GenerationMode]] = [
            ({}, GenerationMode.POSITIVE),
            ({}, GenerationMode.NEGATIVE),
        ]
        if operation.path.startswith(f"{API}/keys/{{id}}"):
            # Random ids find nothing: also aim valid bodies at a real key.
            runs.append(({"id": str(aes_key.pk)}, GenerationMode.POSITIVE))
        for path_parameters, mode in runs:
            strategy = operation.as_strategy(
                generation_mode=mode, headers=headers, path_parameters=path_parameters or None
            )

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def exercise(case: Any) -> None:
                response = case.call()
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                case.validate_response(response, checks=[not_a_server_error])

            try:
                exercise()
            except Unsatisfiable:
                # Nothing to get wrong: the operation takes no input that can be made invalid.
                assert mode == GenerationMode.NEGATIVE, operation.label
            except (Exception, FailureGroup) as exc:  # collect every operation's failures, report them all
                failures.append(f"{operation.label} ({mode}): {type(exc).__name__}: {str(exc)[:300]}")
    assert not failures, "\n".join(failures)
    # The run reached the views: successes and refusals alike, never a server error.
    assert statuses.get(200, 0) > 50 and statuses.get(202, 0) > 0 and statuses.get(400, 0) > 50, statuses
    assert not any(status >= 500 for status in statuses), statuses
