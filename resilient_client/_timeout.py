"""Timeout budget: every attempt and every body read kept inside the call's deadline.

httpx's timeouts are per phase and per read, so on their own they never bound a
call: a server that drips a byte per second keeps a 5 s read timeout alive
forever. This module bounds a call by its absolute deadline in two ways:

1. Each attempt's httpx timeouts (connect, read, write, pool) are shrunk to the
   time left, so a hanging server or a full pool ends in httpx's own timeout,
   exactly at the deadline, without cancelling anything inside the transport.
   (Cancelling a request inside httpcore's pool can leak its connection slot:
   httpcore #1093. A timeout that httpcore raises itself cannot.)
2. A cancel scope at the deadline backs that up for what per-phase timeouts
   cannot see: headers or body arriving a byte at a time, or a transport that
   ignores httpx's timeout extension.

A timeout that fires because the call's deadline is spent is re-raised as
:class:`DeadlineExceededError`; one that fires earlier (the user's own httpx
timeout, or ``timeout.attempt``) keeps its httpx type, since it ends only the
attempt and a later retry may still succeed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

from ._deadline import current_deadline, monotonic
from ._exceptions import DeadlineExceededError
from ._settings import TimeoutPolicy

__all__ = ["DeadlineBody", "TimeoutStrategy"]

# The backstop fires this long after the deadline, so that where the transport
# honours the shrunk timeouts (httpx's does) its own timeout always wins the race.
BACKSTOP_GRACE = 0.005
# A timer can fire a hair before the instant it was set for; treat as "at the deadline".
_CLOCK_SLACK = 0.002

_PHASES = ("connect", "read", "write", "pool")


class TimeoutStrategy:
    """Deadlines and per-attempt timeouts for one dependency."""

    def __init__(self, dependency: str, policy: TimeoutPolicy) -> None:
        self._dependency = dependency
        self._policy = policy

    def call_deadline(self) -> float | None:
        """The deadline a call starting now must meet.

        The client opens a scope with ``timeout.total`` around the whole logical
        call (auth, redirects, body); used as a transport on its own, the
        pipeline applies ``timeout.total`` from here.
        """
        in_force = current_deadline()
        if in_force is not None or self._policy.total is None:
            return in_force
        return monotonic() + self._policy.total

    def expired_error(self, request: httpx.Request, where: str) -> DeadlineExceededError:
        return DeadlineExceededError(
            self._dependency, f"the deadline passed {where}", request=request
        )

    async def attempt(
        self,
        send: Callable[[httpx.Request], Awaitable[httpx.Response]],
        request: httpx.Request,
        call_deadline: float | None,
    ) -> httpx.Response:
        """Send one attempt within ``timeout.attempt``, ``timeout.connect`` and the deadline."""
        now = monotonic()
        limit = call_deadline
        attempt_bound = False
        if self._policy.attempt is not None:
            attempt_end = now + self._policy.attempt
            if limit is None or attempt_end < limit:
                limit, attempt_bound = attempt_end, True
        if limit is None:
            return await send(request)
        left = limit - now
        if left <= 0:
            raise self.expired_error(request, "before the attempt could start")
        request.extensions = {**request.extensions, "timeout": self._shrunk(request, left)}
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + left + BACKSTOP_GRACE) as backstop:
                return await send(request)
        except TimeoutError:
            if not backstop.expired():
                raise
            if attempt_bound:
                raise httpx.TimeoutException(
                    f"attempt exceeded timeout.attempt={self._policy.attempt}s "
                    f"(dependency {self._dependency!r})",
                    request=request,
                ) from None
            raise self.expired_error(request, "while waiting for the response") from None
        except httpx.TimeoutException as exc:
            if call_deadline is not None and monotonic() >= call_deadline - _CLOCK_SLACK:
                raise self.expired_error(
                    request, f"while waiting for the response ({type(exc).__name__})"
                ) from exc
            raise

    def _shrunk(self, request: httpx.Request, left: float) -> dict[str, float | None]:
        configured = request.extensions.get("timeout") or {}
        shrunk: dict[str, float | None] = {}
        for phase in _PHASES:
            value = configured.get(phase)
            bound = left
            if phase == "connect" and self._policy.connect is not None:
                bound = min(bound, self._policy.connect)
            shrunk[phase] = bound if value is None else min(value, bound)
        return shrunk


class DeadlineBody(httpx.AsyncByteStream):
    """A response body whose every read ends by the call's deadline.

    ``on_close`` runs exactly once, when the body is closed, read to the end or
    fails: the pipeline releases the dependency's bulkhead permit there, so a
    streamed response holds its permit for as long as it is open.
    """

    def __init__(
        self,
        inner: httpx.AsyncByteStream,
        *,
        deadline: float | None,
        on_close: Callable[[], None],
        strategy: TimeoutStrategy,
        request: httpx.Request,
    ) -> None:
        self._inner = inner
        self._deadline = deadline
        self._on_close: Callable[[], None] | None = on_close
        self._strategy = strategy
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        deadline = self._deadline
        if deadline is None:
            async for chunk in self._inner:
                yield chunk
            return
        chunks = aiter(self._inner)
        loop = asyncio.get_running_loop()
        while True:
            left = deadline - monotonic()
            if left <= 0:
                raise self._strategy.expired_error(self._request, "while reading the body")
            try:
                async with asyncio.timeout_at(loop.time() + left) as scope:
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if not scope.expired():
                    raise
                raise self._strategy.expired_error(
                    self._request, "while reading the body"
                ) from None
            except httpx.TimeoutException as exc:
                if monotonic() >= deadline - _CLOCK_SLACK:
                    raise self._strategy.expired_error(
                        self._request, f"while reading the body ({type(exc).__name__})"
                    ) from exc
                raise
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()

    def _release(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()
