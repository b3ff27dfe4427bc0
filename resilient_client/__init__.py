"""resilient_client: a drop-in ``httpx.AsyncClient`` that survives partial failure.

Per dependency (matched by host) it keeps a connection pool and bulkhead of its
own and bounds every logical call by a deadline. See docs/architecture.md.
"""

from ._client import AsyncClient
from ._deadline import Deadline, current_deadline, deadline
from ._exceptions import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    RateLimitedError,
    ResilienceError,
    SettingsError,
)
from ._settings import (
    BreakerPolicy,
    BulkheadPolicy,
    DependencyPolicy,
    DependencySettings,
    PoolPolicy,
    RateLimitPolicy,
    ResilienceSettings,
    RetryPolicy,
    TimeoutPolicy,
)
from ._transports import TransportFactory

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
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
    "SettingsError",
    "TimeoutPolicy",
    "TransportFactory",
    "__version__",
    "current_deadline",
    "deadline",
]

# Public names report the public module, as httpx does.
for _name in __all__:
    if not _name.startswith("__"):
        globals()[_name].__module__ = "resilient_client"
del _name
