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
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx

from ._alarms import Alarm, alarm_clock
from ._deadline import deadline_in_force, monotonic
from ._exceptions import DeadlineExceededError
from ._settings import TimeoutPolicy

__all__ = [
    "AttemptGuard",
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
# How long after a body is made its reads may go without an alarm (a body read at
# once), and how far before the deadline such a read's own timeout must fire
# (see DeadlineBody).
BODY_SLACK = 0.01
# An attempt that the call's deadline ends counts as the dependency's failure only
# if the deadline gave it at least this share of the dependency's own allowance
# (timeout.attempt, else timeout.total). With less, the time went elsewhere: to
# the caller's tighter deadline, to waiting on our side (pacing, the bulkhead
# queue), or to earlier attempts. The slack covers the moments between a call's
# start and its first attempt.
FAIR_SHARE = 0.9
# A timer can fire a hair before the instant it was set for; treat as "at the deadline".
_CLOCK_SLACK = 0.002

_PHASES = ("connect", "read", "write", "pool")


def _spent(deadline: float | None) -> bool:
    """Whether ``deadline`` has passed, as far as a timeout that just fired can tell."""
    return deadline is not None and monotonic() >= deadline - _CLOCK_SLACK


class TimeoutStrategy:
    """Deadlines and per-attempt timeouts for one dependency."""

    def __init__(self, dependency: str, policy: TimeoutPolicy) -> None:
        self._dependency = dependency
        self.policy = policy
        # The phase bounds of the last httpx timeouts seen: a client sends the same
        # ones on almost every request, so they are worked out once. Measured with
        # the body's plain reads below: 12 k instructions a request, 0.55% of one
        # (benchmarks/results/2026-12-08-shortcuts.md, "In situ").
        self._last_configured: Mapping[str, float | None] = {}
        self._last_bounds = PhaseBounds(self._last_configured, policy.connect)

    def call_deadline(self) -> float | None:
        """The deadline a request to this dependency starting now must meet.

        The client opens a scope with the first dependency's ``timeout.total``
        around the whole logical call (auth, redirects, body). Each request also
        keeps its own dependency's ``timeout.total`` from now: a redirect to a
        dependency with a shorter budget gets that shorter budget.
        """
        in_force = deadline_in_force()
        total = self.policy.total
        if total is None:
            return in_force
        own = monotonic() + total
        return own if in_force is None or own < in_force else in_force

    def attempt_time_left(self, call_deadline: float | None) -> float | None:
        """Seconds an attempt starting now may take (None: unbounded): what we tell downstream."""
        attempt = self.policy.attempt
        if call_deadline is None:
            return attempt
        left = call_deadline - monotonic()
        return left if attempt is None or left < attempt else attempt

    def expired_error(self, request: httpx.Request, where: str) -> DeadlineExceededError:
        return DeadlineExceededError(
            self._dependency, f"the deadline passed {where}", request=request
        )

    def begin(self, request: httpx.Request, call_deadline: float | None) -> AttemptGuard:
        """Bound one attempt by ``timeout.attempt``, ``timeout.connect`` and the deadline.

        Sets the attempt's httpx timeouts on ``request`` and arms the backstop for
        the current task. The caller then awaits the send itself (a coroutine
        here would be one more frame for every resumption of the transport) and
        ends the guard with exactly one of :meth:`AttemptGuard.succeeded` or
        :meth:`AttemptGuard.failed`.
        """
        now = monotonic()
        limit = call_deadline
        attempt_bound = False
        attempt = self.policy.attempt
        if attempt is not None:
            attempt_end = now + attempt
            if limit is None or attempt_end < limit:
                limit, attempt_bound = attempt_end, True
        if limit is not None and limit <= now:
            raise self.expired_error(request, "before the attempt could start")
        extensions = request.extensions
        configured = extensions.get("timeout") or {}
        if isinstance(configured, LiveTimeouts):
            configured = configured.configured  # a redirect carries the last hop's bounds
        bounds = self._last_bounds
        if configured != self._last_configured:
            bounds = self._last_bounds = PhaseBounds(configured, self.policy.connect)
            self._last_configured = dict(configured)
        timeouts = LiveTimeouts(configured, limit, self.policy.connect, now, bounds=bounds)
        request.extensions = {**extensions, "timeout": timeouts}
        return AttemptGuard(
            self, timeouts, bounds.by_phase["read"], call_deadline, limit, attempt_bound, now
        )

    def attempt_timed_out(self, request: httpx.Request) -> httpx.TimeoutException:
        return httpx.TimeoutException(
            f"attempt exceeded timeout.attempt={self.policy.attempt}s "
            f"(dependency {self._dependency!r})",
            request=request,
        )


class Expired(Exception):
    """A :class:`Watchdog` ended the awaited operation at its deadline."""


class Watchdog(Alarm):
    """An alarm that cancels the task while it is watched (awaiting an operation).

    What ``asyncio.timeout`` does, shaped for this hot path: one alarm serves
    every read of a body (``asyncio.timeout`` would need a timer per read, the
    last empty read included), the alarms share one loop timer (_alarms.py),
    and watching an await costs no objects. The task's cancellation count is
    kept as ``asyncio.timeout`` keeps it, so an outer cancel scope or TaskGroup
    still sees its own cancellations.
    """

    __slots__ = ("_cancelling", "_fired", "_task")

    def __init__(self, when: float | None, now: float) -> None:
        self.cancelled = False  # Alarm's one attribute (its __init__ is a call saved)
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._fired = False
        if when is not None:  # None: never rings
            # Deadlines are on time.monotonic(); the loop's clock may have another origin.
            alarm_clock().set_in(when - now, self)

    def ring(self) -> None:
        self._fired = True
        if self._task is not None:
            self._task.cancel()

    # Used as: ``watch()``; ``await`` the operation; on CancelledError ask
    # ``caused_by_us()``; finally ``unwatch()`` (or ``disarm()``, which also
    # unwatches). Plain calls, not a wrapping coroutine: every extra frame is
    # re-entered each time the operation resumes.

    def watch(self) -> None:
        """Let the alarm cancel the current task until unwatched; raise Expired if past."""
        if self._fired:
            raise Expired
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._cancelling = task.cancelling()

    def caused_by_us(self) -> bool:
        """On CancelledError: whether it was the alarm (and no one else) that cancelled."""
        task = self._task
        return task is not None and self._fired and task.uncancel() <= self._cancelling

    def unwatch(self) -> None:
        self._task = None

    def disarm(self) -> None:
        """Unwatch, and never ring: the operation is over."""
        self._task = None
        self.cancelled = True  # the clock drops it when it comes due, or sweeps it


class AttemptGuard(Watchdog):
    """One attempt's timeouts and backstop, from :meth:`TimeoutStrategy.begin` to its end.

    The backstop watches the task that began the attempt from the start (an
    attempt is one await), and rings ``BACKSTOP_GRACE`` after the attempt's limit.
    Without a limit (no deadline, no ``timeout.attempt``) nothing is armed.

    A disarmed alarm stays in its clock's heap until it comes due or is swept, so
    once the attempt is over the guard lets go of everything but a few numbers:
    holding the attempt's timeouts (and through a request, its whole object
    graph) there would keep hundreds of them alive past their call, for the
    garbage collector to walk.
    """

    __slots__ = (
        "_attempt_bound",
        "_call_deadline",
        "_limit",
        "_strategy",
        "_timeouts",
        "read_bound",
        "started",
    )

    def __init__(
        self,
        strategy: TimeoutStrategy,
        timeouts: LiveTimeouts,
        read_bound: float,
        call_deadline: float | None,
        limit: float | None,
        attempt_bound: bool,
        now: float,
    ) -> None:
        # The clock first: where no asyncio loop runs, its error is the clear one.
        super().__init__(None if limit is None else limit + BACKSTOP_GRACE, now)
        self._strategy = strategy
        self._timeouts: LiveTimeouts | None = timeouts
        # Each body read's own bound apart from the deadline (inf: none).
        self.read_bound = read_bound
        self._call_deadline = call_deadline
        self._attempt_bound = attempt_bound
        self._limit = limit
        self.started = now  # when the attempt was sent (on the monotonic clock)
        if limit is not None:
            self.watch()

    @property
    def cut_short(self) -> bool:
        """Whether this attempt had less than its fair share (FAIR_SHARE) of the
        dependency's own allowance: a deadline that ends it then says nothing
        about the dependency."""
        policy = self._strategy.policy
        allowance = policy.attempt if policy.attempt is not None else policy.total
        if allowance is None:
            return True  # the dependency's own settings give it all the time it takes
        limit = self._limit
        return limit is not None and limit - self.started < FAIR_SHARE * allowance

    def succeeded(self) -> None:
        """The transport returned a response: disarm the backstop."""
        timeouts = self._timeouts
        if timeouts is not None:
            # timeout.attempt bounds the wait for the response; reading its body is
            # bounded by the call's deadline (the transport reads "read" again for it).
            timeouts.limit = self._call_deadline
        self._timeouts = None
        self._task = None
        self.cancelled = True

    def failed(
        self,
        error: BaseException,
        request: httpx.Request,
        on_interrupt: Callable[[], None] | None = None,
    ) -> BaseException:
        """The transport raised ``error``: disarm, and return what to raise in its place.

        A cancellation by the backstop becomes ``httpx.TimeoutException`` (the
        attempt's own limit) or :class:`DeadlineExceededError` (the call's), and
        ``on_interrupt`` runs, since the send was cancelled inside the transport
        (see _pools.py); a timeout the transport raised once the deadline was spent
        becomes :class:`DeadlineExceededError`. Anything else is returned as it is.
        """
        ours = isinstance(error, asyncio.CancelledError) and self.caused_by_us()
        self.disarm()
        self._timeouts = None
        strategy = self._strategy
        replacement: BaseException
        if ours:
            if on_interrupt is not None:
                on_interrupt()
            if self._attempt_bound:
                replacement = strategy.attempt_timed_out(request)
            else:
                replacement = strategy.expired_error(request, "while waiting for the response")
            replacement.__suppress_context__ = True  # as ``raise ... from None``
            return replacement
        if isinstance(error, httpx.TimeoutException) and _spent(self._call_deadline):
            replacement = strategy.expired_error(
                request, f"while waiting for the response ({type(error).__name__})"
            )
            replacement.__cause__ = error
            return replacement
        return error


_UNBOUNDED = math.inf


class LiveTimeouts(dict[str, float | None]):
    """httpx's ``timeout`` extension, each phase worked out when the transport asks for it.

    A transport reads a phase's timeout as that phase starts: httpcore reads
    ``read`` after connecting and writing, and again before the body. A value
    fixed when the attempt started would let a read run past the deadline by
    the time connecting took; here every ``get()`` gives the smaller of the
    caller's own value (and ``timeout.connect`` for ``connect``) and the time
    left until ``limit``. The dict's stored items are those values at the start
    of the attempt, for transports that copy it instead.
    """

    __slots__ = ("_bounds", "configured", "limit")

    def __init__(
        self,
        configured: Mapping[str, float | None],
        limit: float | None,
        connect_cap: float | None,
        now: float,
        *,
        bounds: PhaseBounds | None = None,
    ) -> None:
        self.configured = configured
        # What the values are worked out against from now on (the attempt's guard
        # moves it to the call's deadline once the response has arrived).
        self.limit = limit
        # ``bounds``: PhaseBounds(configured, connect_cap), when the caller has it.
        if bounds is None:
            bounds = PhaseBounds(configured, connect_cap)
        self._bounds = bounds.by_phase
        if limit is None or limit - now >= bounds.longest:
            dict.update(self, bounds.values)  # the deadline bounds no phase yet
        else:
            left = max(0.0, limit - now)
            for phase, bound in self._bounds.items():
                dict.__setitem__(self, phase, bound if bound < left else left)

    def get(self, phase: str, default: float | None = None) -> float | None:  # type: ignore[override]
        bound = self._bounds.get(phase)
        if bound is None:
            return super().get(phase, default)
        limit = self.limit
        if limit is None:
            return None if bound == _UNBOUNDED else bound
        left = limit - monotonic()
        if bound < left:
            return bound
        return left if left > 0.0 else 0.0

    def __getitem__(self, phase: str) -> float | None:
        return self.get(phase) if phase in self._bounds else super().__getitem__(phase)


class PhaseBounds:
    """Each phase's bound apart from the deadline: the caller's own value, and
    ``timeout.connect`` for ``connect`` (inf: none). Working a phase out is then
    one comparison with the time left."""

    __slots__ = ("by_phase", "longest", "values")

    def __init__(self, configured: Mapping[str, float | None], connect_cap: float | None) -> None:
        by_phase = {}
        for phase in _PHASES:
            value = configured.get(phase)
            by_phase[phase] = _UNBOUNDED if value is None else value
        if connect_cap is not None:
            by_phase["connect"] = min(by_phase["connect"], connect_cap)
        self.by_phase = by_phase
        # With at least this much time left, the deadline bounds no phase.
        self.longest = max(by_phase.values())
        self.values = {
            phase: None if bound == _UNBOUNDED else bound for phase, bound in by_phase.items()
        }


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
        on_close: Callable[[], None] | None,
        strategy: TimeoutStrategy,
        request: httpx.Request,
        read_bound: float | None = None,
    ) -> None:
        self._inner = inner
        # Reads that start before ``_unwatched_until`` need no alarm. Without a
        # deadline, none does. ``read_bound`` is the read timeout the transport
        # gives each read of the body, capped by the time left when the body
        # starts (httpx's own transport reads it live then; None: the transport
        # may ignore timeouts, and every read is watched). So reads that start
        # within BODY_SLACK of now overshoot the deadline by at most that; later
        # reads (a slow or dripping body) are watched by the body's alarm.
        # Reads that start before ``_plain_until`` also start more than
        # ``read_bound`` (and BODY_SLACK) before the deadline: they end before it,
        # and a timeout they raise is their own, so they are the inner stream's
        # reads as they are.
        if deadline is None:
            self._unwatched_until = self._plain_until = _UNBOUNDED
        elif read_bound is not None:
            self._unwatched_until = min(monotonic() + BODY_SLACK, deadline)
            self._plain_until = min(self._unwatched_until, deadline - read_bound - BODY_SLACK)
        else:
            self._unwatched_until = self._plain_until = -_UNBOUNDED
        self._deadline = deadline
        self._on_close: list[Callable[[], None]] | None = [] if on_close is None else [on_close]
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

    def __anext__(self) -> Awaitable[bytes]:
        if self._watchdog is None:
            now = monotonic()
            if now < self._plain_until:
                # Almost every read: a small body read at once, with time to spare.
                # The inner stream's own awaitable, handed out: no frame of ours is
                # made or resumed (measured with the phase bounds' cache above).
                return anext(self._chunks)  # type: ignore[arg-type]
            if now < self._unwatched_until:
                return self._unwatched_read()
        return self._watched_read()

    async def _unwatched_read(self) -> bytes:
        # Its timeout may be the deadline's (the time left was shorter than the
        # read timeout when the body started): then it ends the call.
        try:
            return await anext(self._chunks)  # type: ignore[arg-type]
        except httpx.TimeoutException as exc:
            expired = self._deadline_spent(exc)
            if expired is None:
                raise
            raise expired from exc

    async def _watched_read(self) -> bytes:
        deadline = self._deadline
        assert deadline is not None  # without one, no read is watched
        watchdog = self._watchdog
        if watchdog is None:
            now = monotonic()
            if now >= deadline:
                raise self._expired(self._request, "while reading the body")
            watchdog = self._watchdog = Watchdog(deadline, now)
        try:
            watchdog.watch()
            try:
                return await anext(self._chunks)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                if watchdog.caused_by_us():
                    raise Expired from None
                raise
            finally:
                watchdog.unwatch()
        except Expired:
            raise self._expired(self._request, "while reading the body") from None
        except httpx.TimeoutException as exc:
            watchdog.disarm()
            expired = self._deadline_spent(exc)
            if expired is None:
                raise
            raise expired from exc
        except BaseException:  # StopAsyncIteration included: no more reads to watch
            watchdog.disarm()
            raise

    def _deadline_spent(self, exc: httpx.TimeoutException) -> DeadlineExceededError | None:
        """The error to raise instead of a read's own timeout, if the deadline is spent."""
        if _spent(self._deadline):
            return self._expired(self._request, f"while reading the body ({type(exc).__name__})")
        return None

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
