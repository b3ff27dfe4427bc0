"""One dependency's own connection pools, and their replacement when they may have lost slots.

A dependency has one pool per route it uses (direct, or each proxy), built on
first use by the :class:`TransportFactory`. Every call *leases* the pool it
sends on, from sending until its response body is closed, so this module knows
how many calls each pool carries without looking inside it.

Why replacement: httpcore's pool can orphan a connection slot for good when a
request is cancelled between being given a new connection and starting to
connect, or while waiting for one (httpcore #1093, #830); after enough of those
every call fails with PoolTimeout against a healthy server. Nothing outside
httpcore can see an orphan, but every orphan needs a cancellation inside the
transport, or a pool timeout. So this module counts those per pool and:

- once a pool has seen as many interrupted calls as it has spare slots
  (``max_connections`` minus the calls the bulkhead lets in), new calls go to a
  fresh pool: orphans can never take a slot a permitted call needs;
- a pool that timed out with fewer calls leased than slots has lost some: replaced;
  any other pool timeout counts as an interruption (httpcore's pool timeout
  cancels the wait for a connection, where orphans are made);
- a pool that saw any interruption is replaced as soon as no call leases it,
  so after a storm of deadline expiries or cancellations the dependency is
  back to a clean, idle pool.

A replaced pool is closed once its last lease ends; calls still using it finish
undisturbed. This works for any transport: it never looks inside one.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx

from ._transports import Route, TransportFactory

__all__ = ["BackgroundCloser", "DependencyPools", "PoolLease"]


class BackgroundCloser:
    """Closes things later, off the caller's path, and can wait for all of them.

    Used where something must be closed from synchronous code (a release, an
    eviction): the close runs as a task, kept referenced until it is done.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, close: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Start ``close()`` as a task; False (and nothing started) with no running loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        task = loop.create_task(close())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def wait(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass(eq=False)
class _Pool:
    transport: httpx.AsyncBaseTransport
    leases: int = 0
    interrupted: int = 0
    retired: bool = False


class PoolLease:
    """A call's hold on the pool it was sent on; ``release()`` exactly once when done."""

    __slots__ = ("_owner", "_pool", "_released", "transport")

    def __init__(self, owner: DependencyPools, pool: _Pool) -> None:
        self._owner = owner
        self._pool = pool
        self._released = False
        self.transport = pool.transport

    def interrupted(self) -> None:
        """A call was cancelled inside this pool's transport: it may have orphaned a slot."""
        pool = self._pool
        pool.interrupted += 1
        if pool.interrupted >= self._owner.spare_slots:
            self._owner.retire(pool)

    def pool_timed_out(self) -> None:
        """The transport gave up waiting for a connection of this pool."""
        # Counting this call, no more calls than slots: some slots were lost.
        if self._pool.leases <= self._owner.max_connections:
            self._owner.retire(self._pool)
        else:
            # httpcore's own pool timeout cancels the wait for a connection, the
            # very place a cancellation can orphan one: count it like ours.
            self.interrupted()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._owner.release(self._pool)


class DependencyPools:
    """The pools one dependency built, one live pool per route."""

    def __init__(
        self,
        dependency: str,
        factory: TransportFactory,
        limits: httpx.Limits,
        max_concurrent: int,
    ) -> None:
        self._dependency = dependency
        self._factory = factory
        self.limits = limits
        # Slots beyond what the bulkhead ever lets in: how many orphans a pool absorbs.
        # An unbounded pool can't be starved by them; still, don't let them pile up.
        if limits.max_connections is None:
            self.max_connections = sys.maxsize
            self.spare_slots = max_concurrent
        else:
            self.max_connections = limits.max_connections
            self.spare_slots = max(1, self.max_connections - max_concurrent)
        self._live: dict[Route, _Pool] = {}
        self._retired: set[_Pool] = set()
        self._closing = BackgroundCloser()
        self.replaced = 0

    def lease(self, route: Route) -> PoolLease:
        pool = self._live.get(route)
        if pool is None:
            pool = _Pool(self._factory(self._dependency, self.limits, route.proxy))
            self._live[route] = pool
        pool.leases += 1
        return PoolLease(self, pool)

    def retire(self, pool: _Pool) -> None:
        """Send new calls to a fresh pool; close this one when its last lease ends."""
        if pool.retired:
            return
        pool.retired = True
        self.replaced += 1
        for route, live in list(self._live.items()):
            if live is pool:
                del self._live[route]
        self._retired.add(pool)
        if pool.leases == 0:
            self._close_soon(pool)

    def release(self, pool: _Pool) -> None:
        pool.leases -= 1
        if pool.leases:
            return
        if pool.interrupted and not pool.retired:
            self.retire(pool)  # quiet now: swap out a pool that may hold orphans
        elif pool.retired:
            self._close_soon(pool)

    def _close_soon(self, pool: _Pool) -> None:
        # With no loop running now, it stays retired and aclose() closes it.
        if self._closing.start(pool.transport.aclose):
            self._retired.discard(pool)

    @property
    def open(self) -> int:
        """Pools built and not yet closed."""
        return len(self._live) + len(self._retired) + self._closing.pending

    def live_transports(self) -> list[httpx.AsyncBaseTransport]:
        return [pool.transport for pool in self._live.values()]

    async def aclose(self) -> None:
        pools = [*self._live.values(), *self._retired]
        self._live.clear()
        self._retired.clear()
        for pool in pools:
            await pool.transport.aclose()
        await self._closing.wait()
