"""One event-loop timer for every deadline the client watches.

Every attempt sets an alarm (its backstop), and almost every attempt finishes
long before it would go off. A loop timer per alarm (``loop.call_at``, which
``asyncio.timeout`` uses) costs a handle, a push into the loop's heap and a
cancellation each time: a measurable share of a request's client-side CPU.
Here alarms go into one heap per event loop, served by a single loop timer set
for the earliest of them, so setting an alarm is a heap push and cancelling
one is setting a flag: no call into this module at all.

Alarms go off at most :data:`GRANULARITY` late (the timer serves every alarm
due within that much of the earliest, so a busy client wakes up at most a few
hundred times a second). Cancelled alarms stay in the heap until their time
comes, or until the heap has doubled since it was last swept, when it is
rebuilt from the live ones: at most about twice as many entries as live alarms
(plus :data:`_SWEEP_AT`), at a cost spread thinly over the pushes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import weakref

from ._deadline import running_loop

__all__ = ["GRANULARITY", "Alarm", "AlarmClock", "alarm_clock"]

GRANULARITY = 0.005
_SWEEP_AT = 256  # a heap this small is never swept: its cancelled entries cost nothing


class Alarm:
    """Something to do at a time: subclass it and give it ``ring()``.

    Set it with :meth:`AlarmClock.set_in`; set ``cancelled = True`` to stop it
    (before it has rung; afterwards it changes nothing). The clock sets
    ``cancelled`` as it rings an alarm, so an alarm rings at most once.
    """

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def ring(self) -> None:
        raise NotImplementedError


class AlarmClock:
    """The alarms of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: the clock may be the value of a weak-keyed table, where a strong
        # reference back to its key would keep the loop alive.
        self._loop = weakref.ref(loop)
        # asyncio's own loops keep time with time.monotonic(): reading it directly
        # saves a Python call on every alarm set.
        self._time_is_monotonic = type(loop).time is asyncio.BaseEventLoop.time
        self._heap: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()  # ties never compare Alarm objects
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._sweep_above = _SWEEP_AT

    def set_in(self, delay: float, alarm: Alarm) -> None:
        """Ring ``alarm`` from the loop ``delay`` seconds from now (up to GRANULARITY later)."""
        if self._time_is_monotonic:
            when = time.monotonic() + delay
        else:
            when = self._running_loop().time() + delay
        heap = self._heap
        heapq.heappush(heap, (when, next(self._order), alarm))
        if len(heap) > self._sweep_above:
            self._sweep()
        if when < self._timer_at - GRANULARITY:
            self._arm(when)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        assert loop is not None, "an alarm clock is used only while its loop runs"
        return loop

    @property
    def pending(self) -> int:
        """Entries in the heap, cancelled ones included (for tests and health)."""
        return len(self._heap)

    def _sweep(self) -> None:
        self._heap = [entry for entry in self._heap if not entry[2].cancelled]
        heapq.heapify(self._heap)
        self._sweep_above = max(_SWEEP_AT, 2 * len(self._heap))

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._running_loop().call_at(when, self._ring)

    def _ring(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        due = self._running_loop().time() + GRANULARITY
        heap = self._heap
        while heap and heap[0][0] <= due:
            _, _, alarm = heapq.heappop(heap)
            if not alarm.cancelled:
                alarm.cancelled = True
                alarm.ring()
        if heap:
            self._arm(max(heap[0][0], due))


# Each loop's clock is an attribute of the loop, so it lives and dies with it
# (a loop and its clock refer to each other; the cycle collector frees both).
# Loops that take no attributes (uvloop's) find theirs in a weak-keyed table.
_CLOCK_ATTRIBUTE = "_resilient_client_alarm_clock"
_clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AlarmClock] = (
    weakref.WeakKeyDictionary()
)


def alarm_clock() -> AlarmClock:
    """The running loop's alarm clock (a clear error where no asyncio loop runs)."""
    loop = running_loop()
    clock: AlarmClock | None = getattr(loop, _CLOCK_ATTRIBUTE, None)
    return _new_clock(loop) if clock is None else clock


def _new_clock(loop: asyncio.AbstractEventLoop) -> AlarmClock:
    clock = _clocks.get(loop)
    if clock is None:
        clock = AlarmClock(loop)
        try:
            setattr(loop, _CLOCK_ATTRIBUTE, clock)
        except AttributeError:
            _clocks[loop] = clock
    return clock
