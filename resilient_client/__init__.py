"""resilient_client: a drop-in ``httpx.AsyncClient`` that survives partial failure.

Per dependency (matched by host) it keeps a connection pool and bulkhead of its
own and bounds every logical call by a deadline. See docs/architecture.md.
"""

from ._asgi import HealthEndpoint, ResilienceMiddleware
from ._client import AsyncClient
from ._correlation import current_request_id, request_id
from ._deadline import Deadline, current_deadline, deadline
from ._exceptions import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    RateLimitedError,
    ResilienceError,
    SettingsError,
)
from ._logging import ContextFilter
from ._settings import (
    BreakerPolicy,
    BulkheadPolicy,
    DependencyPolicy,
    DependencySettings,
    PoolPolicy,
    RateLimitPolicy,
    ResilienceSettings,
    RetryPolicy,
    RoutePolicy,
    TelemetrySettings,
    TimeoutPolicy,
)
from ._transports import TransportFactory
from ._version import __version__

__all__ = [
    "AsyncClient",
    "BreakerPolicy",
    "BulkheadFullError",
    "BulkheadPolicy",
    "CircuitOpenError",
    "ContextFilter",
    "Deadline",
    "DeadlineExceededError",
    "DependencyPolicy",
    "DependencySettings",
    "HealthEndpoint",
    "PoolPolicy",
    "RateLimitPolicy",
    "RateLimitedError",
    "ResilienceError",
    "ResilienceMiddleware",
    "ResilienceSettings",
    "RetryPolicy",
    "RoutePolicy",
    "SettingsError",
    "TelemetrySettings",
    "TimeoutPolicy",
    "TransportFactory",
    "__version__",
    "current_deadline",
    "current_request_id",
    "deadline",
    "request_id",
]

# Public names report the public module, as httpx does.
for _name in __all__:
    if not _name.startswith("__"):
        globals()[_name].__module__ = "resilient_client"
del _name
