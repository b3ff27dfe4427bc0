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
from typing import Any

import httpx

from ._alarms import cancel_alarm, set_alarm
from ._deadline import current_deadline, monotonic, running_loop
from ._exceptions import DeadlineExceededError
from ._settings import TimeoutPolicy

__all__ = [
    "DeadlineBody",
    "Expired",
    "LiveTimeouts",
    "TimeoutStrategy",
    "Watchdog",
]


# The backstop fires this long after the deadline (plus up to the alarms'
# granularity), so that where the transport honours the shrunk timeouts
# (httpx's does) its own timeout wins the race even on a busy event loop;
# cancelling inside httpcore is what can leak pool slots.
BACKSTOP_GRACE = 0.02
# How late past the deadline a body read by httpx's own transport may end before
# the body's alarm is set (see DeadlineBody).
BODY_SLACK = 0.01
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

    def attempt_time_left(self, call_deadline: float | None) -> float | None:
        """Seconds an attempt starting now may take (None: unbounded): what we tell downstream."""
        attempt = self._policy.attempt
        if call_deadline is None:
            return attempt
        left = call_deadline - monotonic()
        return left if attempt is None or left < attempt else attempt

    def expired_error(self, request: httpx.Request, where: str) -> DeadlineExceededError:
        return DeadlineExceededError(
            self._dependency, f"the deadline passed {where}", request=request
        )

    async def attempt(
        self,
        send: Callable[[httpx.Request], Awaitable[httpx.Response]],
        request: httpx.Request,
        call_deadline: float | None,
        on_interrupt: Callable[[], None] | None = None,
    ) -> httpx.Response:
        """Send one attempt within ``timeout.attempt``, ``timeout.connect`` and the deadline.

        ``on_interrupt`` runs if the backstop had to cancel the send.
        """
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
        timeouts = LiveTimeouts(configured, limit, self._policy.connect, now)
        request.extensions = {**request.extensions, "timeout": timeouts}
        if limit is None:
            return await send(request)
        backstop = Watchdog(limit + BACKSTOP_GRACE, now)
        cancelling = backstop.watch()
        try:
            response = await send(request)
            # timeout.attempt bounds the wait for the response; reading its body is
            # bounded by the call's deadline (the transport reads "read" again for it).
            timeouts.bound_by(call_deadline)
            return response
        except asyncio.CancelledError:
            if not backstop.caused_by_us(cancelling):
                raise
            if on_interrupt is not None:
                on_interrupt()  # cancelled inside the transport: see _pools.py
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
        finally:
            backstop.unwatch()
            backstop.disarm()


class Expired(Exception):
    """A :class:`Watchdog` ended the awaited operation at its deadline."""


class Watchdog:
    """An alarm that cancels the task while it is watched (awaiting an operation).

    What ``asyncio.timeout`` does, shaped for this hot path: one alarm serves
    every read of a body (``asyncio.timeout`` would need a timer per read, the
    last empty read included), the alarms share one loop timer (_alarms.py),
    and watching an await costs no objects. The task's cancellation count is
    kept as ``asyncio.timeout`` keeps it, so an outer cancel scope or TaskGroup
    still sees its own cancellations.
    """

    __slots__ = ("_alarm", "_fired", "_loop", "_task")

    def __init__(self, when: float, now: float) -> None:
        loop = self._loop = running_loop()
        self._task: asyncio.Task[Any] | None = None
        self._fired = False
        # Deadlines are on time.monotonic(); the loop's clock may have another origin.
        self._alarm = set_alarm(loop, loop.time() + (when - now), self._fire)

    def _fire(self) -> None:
        self._fired = True
        if self._task is not None:
            self._task.cancel()

    # Used as: ``watch()``; ``await`` the operation; on CancelledError ask
    # ``caused_by_us()``; finally ``unwatch()``. Plain calls, not a wrapping
    # coroutine: every extra frame is re-entered each time the operation resumes.

    def watch(self) -> int:
        """Let the timer cancel the current task until ``unwatch()``; raise Expired if past."""
        if self._fired:
            raise Expired
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        return task.cancelling()

    def caused_by_us(self, cancelling: int) -> bool:
        """On CancelledError: whether it was the timer (and no one else) that cancelled."""
        task = self._task
        return task is not None and self._fired and task.uncancel() <= cancelling

    def unwatch(self) -> None:
        self._task = None

    def disarm(self) -> None:
        cancel_alarm(self._loop, self._alarm)


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
        self,
        configured: Mapping[str, float | None],
        limit: float | None,
        connect_cap: float | None,
        now: float,
    ) -> None:
        self.configured = configured
        self._limit = limit
        self._connect_cap = connect_cap
        # The values at the start, for transports that copy the dict.
        for phase in _PHASES:
            dict.__setitem__(self, phase, self._value_at(phase, now))

    def bound_by(self, limit: float | None) -> None:
        """From now on, work the values out against ``limit`` instead."""
        self._limit = limit

    def _value_at(self, phase: str, now: float) -> float | None:
        """The caller's own value, capped by the time left at ``now`` (and for connect)."""
        value = self.configured.get(phase)
        limit = self._limit
        if limit is not None:
            left = max(0.0, limit - now)
            if value is None or left < value:
                value = left
        if phase == "connect":
            cap = self._connect_cap
            if cap is not None and (value is None or cap < value):
                value = cap
        return value

    def get(self, phase: str, default: float | None = None) -> float | None:  # type: ignore[override]
        if phase not in _PHASES:
            return super().get(phase, default)
        return self._value_at(phase, monotonic())

    def __getitem__(self, phase: str) -> float | None:
        return self.get(phase) if phase in _PHASES else super().__getitem__(phase)


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
        reads_live_timeouts: bool = False,
    ) -> None:
        self._inner = inner
        # httpx's own transport reads the "read" timeout live when the body starts,
        # so each read it makes ends by (its start + the time that was left then):
        # reads that start within BODY_SLACK of the first overshoot the deadline by
        # at most that, and need no alarm. Only then (a slow or dripping body), or
        # for a transport that may ignore timeouts, is the body's alarm set.
        self._reads_live_timeouts = reads_live_timeouts
        self._first_read_at: float | None = None
        self._deadline = deadline
        self._on_close: list[Callable[[], None]] | None = [on_close]
        self._strategy = strategy
        self._request = request
        self._watchdog: Watchdog | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        # The deadline error a read raised, if one did (telemetry ends the call with it).
        self.failure: DeadlineExceededError | None = None

    # An iterator object rather than an async generator: asyncio registers every
    # async generator with the loop (a hook call and a weak set entry), per body.
    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._chunks is not None:
            raise RuntimeError("a response body can be iterated only once")
        self._chunks = aiter(self._inner)
        return self

    async def __anext__(self) -> bytes:
        chunks = self._chunks
        assert chunks is not None
        deadline = self._deadline
        if deadline is None:
            return await anext(chunks)
        watchdog = self._watchdog
        if watchdog is None:
            now = monotonic()
            if now >= deadline:
                raise self._expired(self._request, "while reading the body")
            if self._reads_live_timeouts:
                if self._first_read_at is None:
                    self._first_read_at = now
                if now - self._first_read_at <= BODY_SLACK:
                    return await self._unwatched_read(chunks, deadline)
            watchdog = self._watchdog = Watchdog(deadline, now)
        try:
            cancelling = watchdog.watch()
            try:
                return await anext(chunks)
            except asyncio.CancelledError:
                if watchdog.caused_by_us(cancelling):
                    raise Expired from None
                raise
            finally:
                watchdog.unwatch()
        except Expired:
            watchdog.disarm()
            raise self._expired(self._request, "while reading the body") from None
        except httpx.TimeoutException as exc:
            watchdog.disarm()
            if monotonic() >= deadline - _CLOCK_SLACK:
                raise self._expired(
                    self._request, f"while reading the body ({type(exc).__name__})"
                ) from exc
            raise
        except BaseException:  # StopAsyncIteration included: no more reads to watch
            watchdog.disarm()
            raise

    async def _unwatched_read(self, chunks: AsyncIterator[bytes], deadline: float) -> bytes:
        try:
            return await anext(chunks)
        except httpx.TimeoutException as exc:
            if monotonic() >= deadline - _CLOCK_SLACK:
                raise self._expired(
                    self._request, f"while reading the body ({type(exc).__name__})"
                ) from exc
            raise

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.disarm()
        try:
            await self._inner.aclose()
        finally:
            self._release()

    def _expired(self, request: httpx.Request, where: str) -> DeadlineExceededError:
        self.failure = self._strategy.expired_error(request, where)
        return self.failure

    def also_on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` too when the body closes (at once if it has closed)."""
        if self._on_close is None:
            callback()
        else:
            self._on_close.append(callback)

    def _release(self) -> None:
        callbacks, self._on_close = self._on_close, None
        for callback in callbacks or ():
            callback()
