"""The errors resilient_client raises, as one tree.

Each error that can end a request also subclasses the httpx error a caller would
already catch, so ``except httpx.HTTPError`` (or ``httpx.TransportError``,
``httpx.TimeoutException``) keeps working unchanged::

    Exception
    ├── ResilienceError                      every error of this library
    │   ├── SettingsError (also ValueError)  a setting is unknown or has a bad value
    │   ├── BulkheadFullError ─┐
    │   ├── CircuitOpenError ──┼── also httpx.TransportError
    │   ├── RateLimitedError ──┘
    │   └── DeadlineExceededError ── also httpx.TimeoutException
    └── httpx.HTTPError                      (httpx's own tree, unchanged)

The request-level errors carry ``dependency`` (the name of the dependency the
request was routed to), ``reason`` (why, in words) and ``request`` (where one
was being sent), and a message that names the dependency and the reason.
"""

from __future__ import annotations

import httpx

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "DeadlineExceededError",
    "RateLimitedError",
    "ResilienceError",
    "SettingsError",
]


class ResilienceError(Exception):
    """Base class of every error raised by resilient_client itself."""


class SettingsError(ResilienceError, ValueError):
    """A resilience setting is unknown or has a value that is not allowed.

    ``problems`` lists one ``(path, message, value)`` per bad setting, where
    ``path`` is the setting's full dotted path, e.g. ``default.timeout.total``.
    """

    def __init__(self, message: str, problems: list[tuple[str, str, object]]) -> None:
        super().__init__(message)
        self.problems = problems


class _DependencyError(ResilienceError):
    """Shared shape of the errors that end one request to one dependency."""

    dependency: str
    reason: str

    def _describe(self, dependency: str, reason: str) -> str:
        self.dependency = dependency
        self.reason = reason
        return f"dependency {dependency!r}: {reason}"


class BulkheadFullError(_DependencyError, httpx.TransportError):
    """The dependency's bulkhead had no free permit and no room (or time) to queue.

    Raised before anything is sent: it says the caller is saturated, not that the
    dependency failed, so it is never retried and never counted as a failure.
    """

    def __init__(
        self, dependency: str, reason: str, *, request: httpx.Request | None = None
    ) -> None:
        super().__init__(self._describe(dependency, reason), request=request)


class CircuitOpenError(_DependencyError, httpx.TransportError):
    """The dependency's circuit breaker is open: the call failed fast, unsent."""

    def __init__(
        self, dependency: str, reason: str, *, request: httpx.Request | None = None
    ) -> None:
        super().__init__(self._describe(dependency, reason), request=request)


class RateLimitedError(_DependencyError, httpx.TransportError):
    """The client-side rate limit, or the throttle that 429s set, could not admit
    the attempt within the call's time left."""

    def __init__(
        self, dependency: str, reason: str, *, request: httpx.Request | None = None
    ) -> None:
        super().__init__(self._describe(dependency, reason), request=request)


class DeadlineExceededError(_DependencyError, httpx.TimeoutException):
    """The time budget of the logical call ran out.

    The budget is the smaller of the dependency's ``timeout.total`` and every
    enclosing :func:`resilient_client.deadline` scope. It covers queueing in the
    bulkhead, every attempt, waits between attempts and reading the body.
    """

    def __init__(
        self, dependency: str, reason: str, *, request: httpx.Request | None = None
    ) -> None:
        super().__init__(self._describe(dependency, reason), request=request)
