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
    transport  the dependency's own connection pool for the URL's route (or the
               transport or mount the user gave the client)
    body       every read of the body bounded by the deadline; closing it
               releases the permit

Deliberately outside: deciding *which* dependency a URL belongs to (the
registry), and the httpx features around a single request — auth flows,
redirects, cookies, event hooks — which stay exactly httpx's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from ._bulkhead import Bulkhead
from ._deadline import monotonic
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
        self._transport_factory = transport_factory
        self._limits = limits
        self._timeout = TimeoutStrategy(name, policy.timeout)
        self._bulkhead = Bulkhead(name, policy.bulkhead)
        # The dependency's own transports, one per route (direct, or each proxy) it used.
        self._transports: dict[Route, httpx.AsyncBaseTransport] = {}
        self._draining: list[httpx.AsyncBaseTransport] = []
        self._closing: set[asyncio.Task[None]] = set()
        self.pools_replaced = 0
        self._retired = False
        self._on_idle_after_retire: Callable[[DependencyPipeline], None] | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        deadline = self._timeout.call_deadline()
        if deadline is not None and monotonic() >= deadline:
            raise self._timeout.expired_error(request, "before the call was admitted")
        await self._bulkhead.acquire(deadline)
        try:
            response = await self._timeout.attempt(self._send_once, request, deadline)
        except BaseException:
            self._release()
            raise
        response.stream = DeadlineBody(
            _as_async_stream(response.stream),
            deadline=deadline,
            on_close=self._release,
            strategy=self._timeout,
            request=request,
        )
        return response

    async def _send_once(self, request: httpx.Request) -> httpx.Response:
        route = self._route_for(request.url)
        if not isinstance(route, Route):
            # The user's own transport or mount, used as given.
            return await route.handle_async_request(request)
        transport = self._transports.get(route)
        if transport is None:
            transport = self._transport_factory(self.name, self._limits, route.proxy)
            self._transports[route] = transport
        try:
            return await transport.handle_async_request(request)
        except httpx.PoolTimeout:
            if self._bulkhead.in_flight <= (self._limits.max_connections or 0):
                self._replace_leaking(route, transport)
            raise

    def _replace_leaking(self, route: Route, transport: httpx.AsyncBaseTransport) -> None:
        """Swap out a pool that timed out although it had a free slot for every call.

        That pool has lost slots: httpcore can orphan a connection when a request
        waiting for one is cancelled (httpcore #1093), and the slot never comes
        back. New calls get a fresh pool; the old one closes when the dependency
        is next idle, so the calls still using it finish undisturbed.
        """
        if self._transports.get(route) is transport:
            del self._transports[route]
            self._draining.append(transport)
            self.pools_replaced += 1

    def _release(self) -> None:
        self._bulkhead.release()
        if self._draining and self.idle:
            self._close_draining()
        if self._retired and self.idle and self._on_idle_after_retire is not None:
            callback, self._on_idle_after_retire = self._on_idle_after_retire, None
            callback(self)

    def _close_draining(self) -> None:
        draining, self._draining = self._draining, []
        task = asyncio.get_running_loop().create_task(_close_all(draining))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

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
        """Close the transports this dependency built (never the user's own)."""
        transports, self._transports = list(self._transports.values()), {}
        draining, self._draining = self._draining, []
        await _close_all([*transports, *draining])
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def health(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of this dependency's state."""
        bulkhead = self.policy.bulkhead
        return {
            "kind": "named" if self.named else "host",
            "in_flight": self._bulkhead.in_flight,
            "queued": self._bulkhead.queued,
            "max_concurrent": bulkhead.max_concurrent,
            "max_queue": bulkhead.max_queue,
            "pool": {
                "max_connections": self._limits.max_connections,
                "max_keepalive": self._limits.max_keepalive_connections,
                "open_transports": len(self._transports),
                "replaced_after_leak": self.pools_replaced,
            },
            "timeout": self.policy.timeout.model_dump(),
        }


async def _close_all(transports: list[httpx.AsyncBaseTransport]) -> None:
    for transport in transports:
        await transport.aclose()


def _as_async_stream(stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> httpx.AsyncByteStream:
    if isinstance(stream, httpx.AsyncByteStream):
        return stream
    raise TypeError(f"the transport returned a synchronous body stream ({type(stream).__name__})")
