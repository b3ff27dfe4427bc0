"""The shared alarm clock behind every deadline backstop (pure logic, no network)."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_client._alarms import _SWEEP_AT, GRANULARITY, Alarm, alarm_clock

pytestmark = pytest.mark.anyio


class _Recorder(Alarm):
    __slots__ = ("name", "rung")

    def __init__(self, name: str, rung: list[tuple[str, float]]) -> None:
        super().__init__()
        self.name = name
        self.rung = rung

    def ring(self) -> None:
        self.rung.append((self.name, time.monotonic()))


async def test_alarms_ring_in_order_once_and_not_early() -> None:
    rung: list[tuple[str, float]] = []
    clock = alarm_clock()
    start = time.monotonic()
    later, sooner = _Recorder("later", rung), _Recorder("sooner", rung)
    clock.set_in(0.06, later)
    clock.set_in(0.02, sooner)
    await asyncio.sleep(0.12)
    assert [name for name, _ in rung] == ["sooner", "later"]
    assert rung[0][1] - start >= 0.02 - 0.002
    assert rung[1][1] - start >= 0.06 - 0.002
    assert later.cancelled
    assert sooner.cancelled


async def test_a_cancelled_alarm_never_rings() -> None:
    rung: list[tuple[str, float]] = []
    clock = alarm_clock()
    stopped, kept = _Recorder("stopped", rung), _Recorder("kept", rung)
    clock.set_in(0.01, stopped)
    clock.set_in(0.01 + GRANULARITY / 2, kept)
    stopped.cancelled = True
    await asyncio.sleep(0.05)
    assert [name for name, _ in rung] == ["kept"]


@settings(max_examples=20, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=3000))
def test_cancelled_alarms_never_pile_up(live_or_cancelled: list[bool]) -> None:
    """However alarms are set and cancelled, the heap stays within about twice the live ones."""

    async def scenario() -> None:
        clock = alarm_clock()
        live = 0
        for keep in live_or_cancelled:
            alarm = _Recorder("x", [])
            clock.set_in(3600, alarm)  # far off: only sweeps remove entries
            if keep:
                live += 1
            else:
                alarm.cancelled = True
            assert clock.pending <= max(_SWEEP_AT, 2 * live) + 1

    asyncio.run(scenario())


def test_a_loop_with_a_pending_alarm_is_freed_once_closed() -> None:
    """A bug found in review: the clock table kept every loop that ever set an alarm alive."""

    async def set_one() -> None:
        alarm_clock().set_in(3600, _Recorder("far", []))

    loop = asyncio.new_event_loop()
    loop.run_until_complete(set_one())
    loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None


def test_outside_a_running_loop_the_error_says_asyncio_only() -> None:
    with pytest.raises(RuntimeError, match="asyncio only"):
        alarm_clock()


def test_a_dependency_that_set_alarms_on_a_loop_does_not_keep_it_alive() -> None:
    """Nothing a dependency keeps from its attempts (a cached clock, say) holds a loop."""
    from resilient_client._settings import TimeoutPolicy
    from resilient_client._timeout import TimeoutStrategy

    strategy = TimeoutStrategy("svc", TimeoutPolicy())

    async def attempt() -> None:
        request = httpx.Request("GET", "http://127.0.0.1:9/")
        strategy.begin(request, None).succeeded()

    loops = []
    for _ in range(2):  # the same dependency on a second loop, as a cache would see it
        loop = asyncio.new_event_loop()
        loop.run_until_complete(attempt())
        loop.close()
        loops.append(weakref.ref(loop))
        del loop
    gc.collect()
    assert [ref() for ref in loops] == [None, None]
