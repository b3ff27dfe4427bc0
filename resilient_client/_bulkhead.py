"""Bulkhead: bounded calls in flight to one dependency, with a bounded, time-limited queue.

A slow dependency can then hold at most ``max_concurrent`` of the caller's
resources; callers beyond that wait in a queue of at most ``max_queue`` for at
most ``queue_timeout`` (or the time the call has left), and beyond that fail at
once with :class:`BulkheadFullError` instead of piling up behind it.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ._deadline import monotonic, running_loop
from ._exceptions import BulkheadFullError, DeadlineExceededError
from ._settings import BulkheadPolicy

__all__ = ["Bulkhead"]


class Bulkhead:
    """Admission control for one dependency; ``acquire()`` then exactly one ``release()``.

    Permits go to waiters first come, first served, and a released permit is
    handed straight to the oldest waiter, so a newcomer can never overtake the
    queue. The uncontended path takes no lock, makes no timer and never yields.
    """

    def __init__(self, dependency: str, policy: BulkheadPolicy) -> None:
        self._dependency = dependency
        self._policy = policy
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_flight(self) -> int:
        """Calls holding a permit now."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Calls waiting for a permit now."""
        return len(self._waiters)

    async def acquire(self, deadline: float | None) -> None:
        """Take a permit, waiting in the queue if there is room, or raise.

        Raises :class:`BulkheadFullError` when the queue is full or the queue wait
        ran out, :class:`DeadlineExceededError` when the call's deadline did.
        """
        policy = self._policy
        if self._in_flight < policy.max_concurrent and not self._waiters:
            self._in_flight += 1
            return
        if len(self._waiters) >= policy.max_queue:
            raise BulkheadFullError(
                self._dependency,
                f"{self._in_flight} calls in flight (max_concurrent={policy.max_concurrent}) "
                f"and {len(self._waiters)} queued (max_queue={policy.max_queue})",
            )
        wait = policy.queue_timeout
        deadline_binds = deadline is not None and deadline - monotonic() < wait
        if deadline is not None and deadline_binds:
            wait = max(0.0, deadline - monotonic())
        granted: asyncio.Future[None] = running_loop().create_future()
        self._waiters.append(granted)
        try:
            async with asyncio.timeout(wait):
                await granted
        except BaseException as exc:
            if granted.done() and not granted.cancelled():
                # The permit was handed over just as the wait ended: pass it on.
                self.release()
            elif granted in self._waiters:  # release() may have dropped it already
                self._waiters.remove(granted)
            if not isinstance(exc, TimeoutError):
                raise
            if deadline_binds:
                raise DeadlineExceededError(
                    self._dependency, "the deadline passed while queued in the bulkhead"
                ) from None
            raise BulkheadFullError(
                self._dependency,
                f"no permit within queue_timeout={policy.queue_timeout}s "
                f"({self._in_flight} in flight, max_concurrent={policy.max_concurrent})",
            ) from None
        # Woken by release(), which handed its permit over: in_flight already counts it.

    def release(self) -> None:
        """Give back the permit taken by one successful ``acquire()``."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                # Handed straight to the oldest waiter: still one call in flight, so
                # no newcomer can slip in before the waiter wakes up.
                waiter.set_result(None)
                return
        self._in_flight -= 1
