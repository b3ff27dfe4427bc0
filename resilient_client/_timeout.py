"""Timeout budget: every attempt and every body read kept inside the call's deadline.

httpx's timeouts are per phase and per read, so on their own they never bound a
call: a server that drips a byte per second keeps a 5 s read timeout alive
forever. This module bounds a call by its absolute deadline in two ways:

1. Each attempt's httpx timeouts (connect, read, write, pool) are shrunk to the
   time left *when the transport reads them* (:class:`LiveTimeouts`), so a
   hanging server or a full pool ends in httpx's own timeout, exactly at the
   deadline, without cancelling anything inside the transport.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import httpx

from ._deadline import current_deadline, monotonic
from ._exceptions import DeadlineExceededError
from ._settings import TimeoutPolicy

__all__ = ["DeadlineBody", "LiveTimeouts", "TimeoutStrategy"]

# The backstop fires this long after the deadline, so that where the transport
# honours the shrunk timeouts (httpx's does) its own timeout wins the race even
# on a busy event loop; cancelling inside httpcore is what can leak pool slots.
BACKSTOP_GRACE = 0.02
# A timer can fire a hair before the instant it was set for; treat as "at the deadline".
_CLOCK_SLACK = 0.002

_PHASES = ("connect", "read", "write", "pool")


class TimeoutStrategy:
    """Deadlines and per-attempt timeouts for one dependency."""

    def __init__(self, dependency: str, policy: TimeoutPolicy) -> None:
        self._dependency = dependency
        self._policy = policy

    def call_deadline(self) -> float | None:
        """The deadline a request to this dependency starting now must meet.

        The client opens a scope with the first dependency's ``timeout.total``
        around the whole logical call (auth, redirects, body). Each request also
        keeps its own dependency's ``timeout.total`` from now: a redirect to a
        dependency with a shorter budget gets that shorter budget.
        """
        in_force = current_deadline()
        if self._policy.total is None:
            return in_force
        own = monotonic() + self._policy.total
        return own if in_force is None or own < in_force else in_force

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
        if limit is not None and limit <= now:
            raise self.expired_error(request, "before the attempt could start")
        configured = request.extensions.get("timeout") or {}
        if isinstance(configured, LiveTimeouts):
            configured = configured.configured  # a redirect carries the last hop's bounds
        request.extensions = {
            **request.extensions,
            "timeout": LiveTimeouts(configured, limit, self._policy.connect),
        }
        if limit is None:
            return await send(request)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + (limit - now) + BACKSTOP_GRACE) as backstop:
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


class LiveTimeouts(dict[str, float | None]):
    """httpx's ``timeout`` extension, each phase worked out when the transport asks for it.

    A transport reads a phase's timeout as that phase starts: httpcore reads
    ``read`` after connecting and writing, and again before the body. A value
    fixed when the attempt started would let a read run past the deadline by
    the time connecting took; here every ``get()`` gives the smaller of the
    caller's own value and the time left until ``limit`` (and ``timeout.connect``
    for ``connect``). The dict's stored items are those values at the start of
    the attempt, for transports that copy it instead.
    """

    __slots__ = ("_connect_cap", "_limit", "configured")

    def __init__(
        self, configured: Mapping[str, float | None], limit: float | None, connect_cap: float | None
    ) -> None:
        self.configured = configured
        self._limit = limit
        self._connect_cap = connect_cap
        super().__init__({phase: self._value(phase) for phase in _PHASES})

    def _value(self, phase: str) -> float | None:
        value = self.configured.get(phase)
        bounds = [] if value is None else [value]
        if self._limit is not None:
            bounds.append(max(0.0, self._limit - monotonic()))
        if phase == "connect" and self._connect_cap is not None:
            bounds.append(self._connect_cap)
        return min(bounds) if bounds else None

    def get(self, phase: str, default: float | None = None) -> float | None:  # type: ignore[override]
        return self._value(phase) if phase in _PHASES else super().get(phase, default)

    def __getitem__(self, phase: str) -> float | None:
        return self._value(phase) if phase in _PHASES else super().__getitem__(phase)


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
