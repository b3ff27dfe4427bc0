"""Small helpers shared by the tests."""

from __future__ import annotations

import httpx

from resilient_client import AsyncClient
from resilient_client._pipeline import DependencyPipeline
from resilient_client.bench._stats import percentile as nearest_rank


def pipeline_of(client: AsyncClient, url: str) -> DependencyPipeline:
    """The pipeline a URL is routed to (white-box: for assertions on state)."""
    return client._registry.resolve(httpx.URL(url))


def busy_connections(pipeline: DependencyPipeline) -> list[str]:
    """What is active or queued in the dependency's live httpcore pools; [] when idle.

    Looks inside httpcore on purpose: it proves no connection slot leaked.
    """
    busy: list[str] = []
    for transport in pipeline._pools.live_transports():
        assert isinstance(transport, httpx.AsyncHTTPTransport)
        pool = transport._pool
        busy.extend(f"queued request {r!r}" for r in pool._requests)
        busy.extend(repr(c) for c in pool.connections if not (c.is_idle() or c.is_closed()))
    return busy


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (any order), as the bench computes it."""
    value = nearest_rank(sorted(values), fraction)
    assert value is not None, "no values"
    return value
