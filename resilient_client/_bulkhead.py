"""Bulkhead: bounded calls in flight to one dependency, with a bounded, time-limited queue.

A slow dependency can then hold at most ``max_concurrent`` of the caller's
resources; callers beyond that wait in a queue of at most ``max_queue`` for at
most ``queue_timeout`` (or the time the call has left), and beyond that fail at
once with :class:`BulkheadFullError` instead of piling up behind it.
"""

from __future__ import annotations

import asyncio

from ._deadline import monotonic
from ._exceptions import BulkheadFullError, DeadlineExceededError
from ._settings import BulkheadPolicy

__all__ = ["Bulkhead"]


class Bulkhead:
    """Admission control for one dependency; ``acquire()`` then exactly one ``release()``."""

    def __init__(self, dependency: str, policy: BulkheadPolicy) -> None:
        self._dependency = dependency
        self._policy = policy
        # asyncio.Semaphore is FIFO and handles a waiter cancelled just as it was woken.
        self._permits = asyncio.Semaphore(policy.max_concurrent)
        self._in_flight = 0
        self._queued = 0

    @property
    def in_flight(self) -> int:
        """Calls holding a permit now."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Calls waiting for a permit now."""
        return self._queued

    async def acquire(self, deadline: float | None) -> None:
        """Take a permit, waiting in the queue if there is room, or raise.

        Raises :class:`BulkheadFullError` when the queue is full or the queue wait
        ran out, :class:`DeadlineExceededError` when the call's deadline did.
        """
        if not self._permits.locked():
            # Uncontended fast path: no timer, no task switch.
            await self._permits.acquire()
            self._in_flight += 1
            return
        policy = self._policy
        if self._queued >= policy.max_queue:
            raise BulkheadFullError(
                self._dependency,
                f"{self._in_flight} calls in flight (max_concurrent={policy.max_concurrent}) "
                f"and {self._queued} queued (max_queue={policy.max_queue})",
            )
        wait = policy.queue_timeout
        deadline_binds = deadline is not None and deadline - monotonic() < wait
        if deadline_binds:
            assert deadline is not None
            wait = max(0.0, deadline - monotonic())
        self._queued += 1
        try:
            async with asyncio.timeout(wait):
                await self._permits.acquire()
        except TimeoutError:
            if deadline_binds:
                raise DeadlineExceededError(
                    self._dependency, "the deadline passed while queued in the bulkhead"
                ) from None
            raise BulkheadFullError(
                self._dependency,
                f"no permit within queue_timeout={policy.queue_timeout}s "
                f"({self._in_flight} in flight, max_concurrent={policy.max_concurrent})",
            ) from None
        finally:
            self._queued -= 1
        self._in_flight += 1

    def release(self) -> None:
        """Give back the permit taken by one successful ``acquire()``."""
        self._in_flight -= 1
        self._permits.release()
