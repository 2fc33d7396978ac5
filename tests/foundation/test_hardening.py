"""Requests that used to be able to reach a 500: NUL characters, and HSM failures escaping a view."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.http import HttpResponse
from django.test import RequestFactory

from audit.models import AuditEvent
from audit.services import record
from kms_console.lib.middleware import ExternalErrorMiddleware
from lifecycle.hsm import HsmDataError, HsmTransientError
from tests.conftest import api_client, web_client


def test_a_nul_in_a_console_url_names_nothing(olivia: Any) -> None:
    response = web_client(olivia).get("/policies/a%00b/")
    assert response.status_code == 404


def test_a_nul_in_an_api_query_answers_the_error_shape(erin: Any) -> None:
    response = api_client(erin).get("/api/v1/audit/events/", {"action": "a\x00b"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"


def test_a_nul_in_an_api_form_post_is_refused(alice: Any) -> None:
    response = api_client(alice).post("/api/v1/keys/", {"name": "x\x00y"})
    assert response.status_code == 400


def test_a_nul_inside_a_json_body_is_a_400(alice: Any) -> None:
    client = api_client(alice)
    body = json.dumps({"name": "a\u0000b", "algorithm": "AES-256", "usage": "encrypt_decrypt", "justification": "j"})
    response = client.post("/api/v1/keys/", body, content_type="application/json")
    assert response.status_code == 400
    assert "NUL" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_the_audit_trail_stores_a_nul_as_a_replacement_character() -> None:
    event = record("test.nul", details={"query": "a\x00b"})
    event = AuditEvent.objects.get(pk=event.pk)
    assert event.details == {"query": "a\ufffdb"}


@pytest.mark.parametrize(("error", "status"), [(HsmTransientError("token busy"), 503), (HsmDataError("bad blob"), 400)])
def test_an_hsm_failure_escaping_a_console_view_is_a_clear_page(error: Exception, status: int) -> None:
    request = RequestFactory().get("/keys/")
    response = ExternalErrorMiddleware(lambda r: HttpResponse())(request)
    assert response.status_code == 200
    response = ExternalErrorMiddleware(lambda r: HttpResponse()).process_exception(request, error)
    assert response is not None
    assert response.status_code == status
    assert str(error) in response.content.decode()


def test_an_hsm_failure_escaping_an_api_view_uses_the_error_shape() -> None:
    request = RequestFactory().get("/api/v1/keys/")
    response = ExternalErrorMiddleware(lambda r: HttpResponse()).process_exception(
        request, HsmTransientError("token busy")
    )
    assert response.status_code == 503
    assert json.loads(response.content)["error"] == {"code": "hsm_unavailable", "message": "token busy", "details": {}}


def test_a_refused_page_is_logged_in_one_line_without_a_traceback() -> None:
    import logging
    import sys

    from kms_console.lib.logs import ClientErrorFormatter

    try:
        raise PermissionError("no")
    except PermissionError:
        exc_info = sys.exc_info()
    formatter = ClientErrorFormatter("%(message)s")
    refused = logging.LogRecord("django.request", logging.WARNING, __file__, 1, "Forbidden: /audit/", (), exc_info)
    refused.status_code = 403
    assert formatter.format(refused) == "Forbidden: /audit/"
    assert refused.exc_info is exc_info  # other handlers still see the exception
    broken = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "Server error: /x/", (), exc_info)
    broken.status_code = 500
    assert "Traceback" in formatter.format(broken)
