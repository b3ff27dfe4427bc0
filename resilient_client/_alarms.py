"""One event-loop timer for every deadline the client watches.

Every call sets two alarms (the attempt's backstop and the body's deadline),
and almost every call finishes long before either goes off. A loop timer per
alarm (``loop.call_at``, which ``asyncio.timeout`` uses) costs a handle, a push
into the loop's heap and a cancellation each time: a measurable share of a
request's client-side CPU. Here alarms go into one heap per event loop, served
by a single loop timer set for the earliest of them, so setting an alarm is a
heap push and cancelling one is a flag.

Alarms go off at most :data:`GRANULARITY` late (the timer serves every alarm
due within that much of the earliest, so a busy client wakes up at most a few
hundred times a second). Cancelled alarms stay in the heap until their time
comes, or until they outnumber the live ones, when the heap is rebuilt.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import weakref
from collections.abc import Callable

__all__ = ["GRANULARITY", "Alarm", "cancel_alarm", "set_alarm"]

GRANULARITY = 0.005
_REBUILD_AT = 256  # cancelled alarms tolerated in the heap before considering a rebuild


class Alarm:
    """An alarm set by :func:`set_alarm`; ``cancel()`` before it goes off to stop it."""

    __slots__ = ("_callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._callback = _nothing


def _nothing() -> None:
    pass


class _AlarmClock:
    """The alarms of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()  # ties never compare Alarm objects
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._cancelled_in_heap = 0

    def set(self, when: float, callback: Callable[[], None]) -> Alarm:
        alarm = Alarm(callback)
        heapq.heappush(self._heap, (when, next(self._order), alarm))
        if when < self._timer_at - GRANULARITY:
            self._arm(when)
        return alarm

    def note_cancelled(self) -> None:
        self._cancelled_in_heap += 1
        if self._cancelled_in_heap > _REBUILD_AT and self._cancelled_in_heap * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled_in_heap = 0

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._ring)

    def _ring(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        due = self._loop.time() + GRANULARITY
        heap = self._heap
        while heap and heap[0][0] <= due:
            _, _, alarm = heapq.heappop(heap)
            if alarm.cancelled:
                self._cancelled_in_heap -= 1
            else:
                alarm.cancelled = True
                alarm._callback()
        if heap:
            self._arm(max(heap[0][0], due))


_clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AlarmClock] = (
    weakref.WeakKeyDictionary()
)


def set_alarm(loop: asyncio.AbstractEventLoop, when: float, callback: Callable[[], None]) -> Alarm:
    """Call ``callback`` from ``loop`` at loop time ``when`` (up to GRANULARITY later)."""
    clock = _clocks.get(loop)
    if clock is None:
        clock = _clocks[loop] = _AlarmClock(loop)
    return clock.set(when, callback)


def cancel_alarm(loop: asyncio.AbstractEventLoop, alarm: Alarm) -> None:
    """Stop ``alarm``; cheap, and safe whether or not it has gone off."""
    if not alarm.cancelled:
        alarm.cancel()
        clock = _clocks.get(loop)
        if clock is not None:
            clock.note_cancelled()
