"""The public surface is exactly what __all__ says, and the error tree is as documented."""

from __future__ import annotations

import httpx
import pytest

import resilient_client as rc

EXPORTED = {
    "AsyncClient",
    "request_id",
    "current_request_id",
    "TelemetrySettings",
    "ResilienceMiddleware",
    "HealthEndpoint",
    "ContextFilter",
    "BreakerPolicy",
    "BulkheadFullError",
    "BulkheadPolicy",
    "CircuitOpenError",
    "Deadline",
    "DeadlineExceededError",
    "DependencyPolicy",
    "DependencySettings",
    "PoolPolicy",
    "RateLimitPolicy",
    "RateLimitedError",
    "ResilienceError",
    "ResilienceSettings",
    "RetryPolicy",
    "RoutePolicy",
    "SettingsError",
    "TimeoutPolicy",
    "TransportFactory",
    "__version__",
    "current_deadline",
    "deadline",
}


# Subpackages, not names of the package: each is an attribute once something imports it.
SUBPACKAGES = {"bench", "testing"}


def test_exported_names_are_pinned() -> None:
    assert set(rc.__all__) == EXPORTED
    public = {name for name in dir(rc) if not name.startswith("_")} - SUBPACKAGES
    assert public == EXPORTED - {"__version__"}


def test_public_names_report_the_public_module() -> None:
    for name in rc.__all__:
        if not name.startswith("__"):
            assert getattr(rc, name).__module__ == "resilient_client", name


@pytest.mark.parametrize(
    ("error", "httpx_base"),
    [
        (rc.BulkheadFullError, httpx.TransportError),
        (rc.CircuitOpenError, httpx.TransportError),
        (rc.RateLimitedError, httpx.TransportError),
        (rc.DeadlineExceededError, httpx.TimeoutException),
    ],
)
def test_request_errors_are_httpx_errors_too(
    error: type[rc.ResilienceError], httpx_base: type[httpx.HTTPError]
) -> None:
    assert issubclass(error, rc.ResilienceError)
    assert issubclass(error, httpx_base)
    request = httpx.Request("GET", "http://payments.internal/")
    raised = error("payments", "it is having a bad day", request=request)  # type: ignore[call-arg]
    assert str(raised) == "dependency 'payments': it is having a bad day"
    assert getattr(raised, "dependency", None) == "payments"
    assert getattr(raised, "reason", None) == "it is having a bad day"
    assert getattr(raised, "request", None) is request
    with pytest.raises(httpx.HTTPError):
        raise raised


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(rc.SettingsError, ValueError)
    assert issubclass(rc.SettingsError, rc.ResilienceError)
    assert not issubclass(rc.SettingsError, httpx.HTTPError)
