"""The per-dependency pipeline: every resilience layer of one dependency, composed here.

Outermost first, as a request passes through them::

    deadline   the call's absolute deadline: the earliest of every enclosing
               ``deadline()`` scope and ``timeout.total`` (opened by the client
               around the whole logical call, so redirects, auth round trips
               and the body read share one budget)
    bulkhead   a permit per call in flight; beyond ``max_concurrent`` calls wait
               in a bounded queue, beyond that they fail fast. The permit is held
               until the response body is closed, because an open body holds a
               connection
    attempt    httpx's per-phase timeouts shrunk to the time left, bounded by
               ``timeout.attempt`` and ``timeout.connect``; a backstop at the deadline
    transport  the dependency's own connection pool for the URL's route, leased
               until the body is closed and replaced if it may have lost slots
               (or the transport or mount the user gave the client, as given)
    body       every read of the body bounded by the deadline; closing it
               releases the permit

Deliberately outside: deciding *which* dependency a URL belongs to (the
registry), and the httpx features around a single request — auth flows,
redirects, cookies, event hooks — which stay exactly httpx's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from ._bulkhead import Bulkhead
from ._deadline import monotonic
from ._pools import DependencyPools, PoolLease
from ._settings import DependencyPolicy
from ._timeout import DeadlineBody, TimeoutStrategy
from ._transports import Route, TransportFactory

__all__ = ["DependencyPipeline"]

RouteSelector = Callable[[httpx.URL], httpx.AsyncBaseTransport]


class DependencyPipeline(httpx.AsyncBaseTransport):
    """The resilience layers and connection pools of one dependency."""

    def __init__(
        self,
        name: str,
        policy: DependencyPolicy,
        *,
        named: bool,
        route_for: RouteSelector,
        transport_factory: TransportFactory,
        limits: httpx.Limits,
    ) -> None:
        self.name = name
        self.policy = policy
        self.named = named
        self._route_for = route_for
        self._timeout = TimeoutStrategy(name, policy.timeout)
        self._bulkhead = Bulkhead(name, policy.bulkhead)
        self._pools = DependencyPools(
            name, transport_factory, limits, policy.bulkhead.max_concurrent
        )
        self._retired = False
        self._on_idle_after_retire: Callable[[DependencyPipeline], None] | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        deadline = self._timeout.call_deadline()
        if deadline is not None and monotonic() >= deadline:
            raise self._timeout.expired_error(request, "before the call was admitted")
        await self._bulkhead.acquire(deadline)
        lease: PoolLease | None = None
        try:
            route = self._route_for(request.url)
            if isinstance(route, Route):
                lease = self._pools.lease(route)
                send = lease.send
            else:
                send = route.handle_async_request  # the user's own transport or mount
            response = await self._timeout.attempt(send, request, deadline)
        except BaseException:
            self._release(lease)
            raise
        if response.is_closed:
            # Built from bytes (MockTransport, ASGI apps, caches): already read and
            # closed, so no one will ever close it again. It holds no connection.
            self._release(lease)
            return response
        response.stream = DeadlineBody(
            _as_async_stream(response.stream),
            deadline=deadline,
            on_close=lambda: self._release(lease),
            strategy=self._timeout,
            request=request,
        )
        return response

    def _release(self, lease: PoolLease | None) -> None:
        if lease is not None:
            lease.release()
        self._bulkhead.release()
        if self._retired and self.idle and self._on_idle_after_retire is not None:
            callback, self._on_idle_after_retire = self._on_idle_after_retire, None
            callback(self)

    @property
    def has_pools(self) -> bool:
        """Whether this dependency holds any pool that needs closing."""
        return self._pools.open > 0

    @property
    def retired(self) -> bool:
        """Dropped from the registry: it only finishes the calls it has."""
        return self._retired

    @property
    def idle(self) -> bool:
        return self._bulkhead.in_flight == 0 and self._bulkhead.queued == 0

    def retire(self, on_idle: Callable[[DependencyPipeline], None]) -> None:
        """Stop tracking this pipeline: ``on_idle`` runs once no call is using it any more.

        Calls already in flight finish normally on the pools they hold.
        """
        self._retired = True
        if self.idle:
            on_idle(self)
        else:
            self._on_idle_after_retire = on_idle

    async def aclose(self) -> None:
        """Close the pools this dependency built (never the user's own transports)."""
        await self._pools.aclose()

    def health(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of this dependency's state."""
        bulkhead = self.policy.bulkhead
        limits = self._pools.limits
        return {
            "kind": "named" if self.named else "host",
            "in_flight": self._bulkhead.in_flight,
            "queued": self._bulkhead.queued,
            "max_concurrent": bulkhead.max_concurrent,
            "max_queue": bulkhead.max_queue,
            "pool": {
                "max_connections": limits.max_connections,
                "max_keepalive": limits.max_keepalive_connections,
                "open_pools": self._pools.open,
                "replaced": self._pools.replaced,
            },
            "timeout": self.policy.timeout.model_dump(),
        }


def _as_async_stream(stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> httpx.AsyncByteStream:
    if isinstance(stream, httpx.AsyncByteStream):
        return stream
    raise TypeError(f"the transport returned a synchronous body stream ({type(stream).__name__})")
