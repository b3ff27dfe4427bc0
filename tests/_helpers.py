"""Small helpers shared by the tests."""

from __future__ import annotations

import httpx

from resilient_client import AsyncClient
from resilient_client._pipeline import DependencyPipeline


def pipeline_of(client: AsyncClient, url: str) -> DependencyPipeline:
    """The pipeline a URL is routed to (white-box: for assertions on state)."""
    return client._registry.resolve(httpx.URL(url))


def pool_is_idle(pipeline: DependencyPipeline) -> bool:
    """No request is active or queued in any of the dependency's httpcore pools.

    Looks inside httpcore on purpose: it proves no connection slot leaked.
    """
    for transport in pipeline._pools.live_transports():
        assert isinstance(transport, httpx.AsyncHTTPTransport)
        pool = transport._pool
        if pool._requests:
            return False
        if any(not (c.is_idle() or c.is_closed()) for c in pool.connections):
            return False
    return True


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]
