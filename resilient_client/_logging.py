"""Structured log records: who logs what, with which fields, and how often.

Every record the library writes goes to the ``resilient_client`` logger with
these extra fields (read them as attributes of the ``LogRecord``, or let a JSON
formatter pick them up):

=================  ==============================================================
``dependency``     the dependency's name
``host``           the host, on a breaker transition of one host of a named
                   dependency (None for a dependency of one host)
``request_id``     the call's request id (the header sent, or the one bound here)
``trace_id``       the current trace, 32 hex digits (None outside a trace)
``span_id``        the current span, 16 hex digits (None outside a trace)
``event``          what happened: ``breaker_state``, ``rejected``
=================  ==============================================================

State changes (a breaker opening or closing) are logged once each, at WARNING.
Rejections are logged at WARNING too, but at most once per dependency and
reason every :data:`REJECTION_LOG_INTERVAL` seconds, with the count of the ones
not logged: an open breaker refuses every call, and a log line per refusal
would bury the one line that says why.

:class:`ContextFilter` adds ``request_id``, ``trace_id`` and ``span_id`` to any
record, so a service's own log lines carry them too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from opentelemetry import trace

from ._correlation import current_request_id

__all__ = ["REJECTION_LOG_INTERVAL", "ContextFilter", "RejectionLog", "context_fields", "logger"]

logger = logging.getLogger("resilient_client")

REJECTION_LOG_INTERVAL = 10.0


def context_fields(request_id: str | None = None) -> dict[str, Any]:
    """``request_id``, ``trace_id`` and ``span_id`` of the code running now."""
    span_context = trace.get_current_span().get_span_context()
    valid = span_context.is_valid
    return {
        "request_id": request_id if request_id is not None else current_request_id(),
        "trace_id": format(span_context.trace_id, "032x") if valid else None,
        "span_id": format(span_context.span_id, "016x") if valid else None,
    }


class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``trace_id`` and ``span_id`` to every record it sees.

    Attach it to a handler (``handler.addFilter(rc.ContextFilter())``) and use
    ``%(request_id)s`` in a format, or let a JSON formatter emit the fields.
    Fields a record already has (the library's own records) are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in context_fields().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class RejectionLog:
    """Logs one dependency's rejections, at most once per reason per interval."""

    def __init__(self, dependency: str, interval: float = REJECTION_LOG_INTERVAL) -> None:
        self._dependency = dependency
        self._interval = interval
        # reason -> (when last logged, rejections since then not logged)
        self._last: dict[str, tuple[float, int]] = {}

    def rejected(self, reason: str, error: BaseException | str, request_id: str | None) -> None:
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last[0] < self._interval:
            self._last[reason] = (last[0], last[1] + 1)
            return
        suppressed = 0 if last is None else last[1]
        self._last[reason] = (now, 0)
        logger.warning(
            "dependency %r: call rejected (%s): %s%s",
            self._dependency,
            reason,
            error,
            f" [{suppressed} more since the last such record]" if suppressed else "",
            extra={
                "event": "rejected",
                "dependency": self._dependency,
                "reason": reason,
                "suppressed": suppressed,
                **context_fields(request_id),
            },
        )
