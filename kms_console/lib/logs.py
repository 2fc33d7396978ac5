"""Logging helpers."""

from __future__ import annotations

import logging


class ClientErrorFormatter(logging.Formatter):
    """Format Django's log line for a 4xx answer (PermissionDenied, Http404, ...) without the
    traceback of the exception behind it: a refused or missing page is an ordinary answer. The line
    itself ("Forbidden (Permission denied): /audit/") stays; a 5xx keeps its traceback. The record is
    copied, not changed, so other handlers still see the exception."""

    def format(self, record: logging.LogRecord) -> str:
        status = getattr(record, "status_code", None)
        client_error = isinstance(status, int) and 400 <= status < 500
        if record.exc_info and client_error and record.name.startswith("django.request"):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return super().format(record)
