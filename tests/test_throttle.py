"""The adaptive throttle: off until a 429, cut to 0.7x the send rate, grows back, paces waiters."""

from __future__ import annotations

import asyncio
import itertools
import math
import time

import pytest

import resilient_client as rc
from resilient_client._throttle import BETA, MIN_RATE, RELEASE_FACTOR, SCALE, AdaptiveThrottle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sending(throttle: AdaptiveThrottle, clock: FakeClock, rate: float, seconds: float) -> None:
    """Record attempts going out at ``rate`` a second for ``seconds``."""
    for _ in range(round(rate * seconds)):
        clock.now += 1 / rate
        throttle.sent()


def test_it_is_off_until_the_dependency_answers_429() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle("api", clock=clock)
    _sending(throttle, clock, 200, 2.0)
    assert throttle.off
    assert throttle.rate() is None
    assert throttle.health() == {"rate": None, "ceiling": None, "throttled": 0}


def test_a_429_cuts_the_rate_to_beta_times_the_send_rate() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle("api", clock=clock)
    _sending(throttle, clock, 100, 2.5)
    throttle.throttled(clock.now)
    assert not throttle.off
    rate = throttle.rate()
    assert rate == pytest.approx(100 * BETA, rel=0.05)
    assert throttle.health()["ceiling"] == pytest.approx(100, rel=0.05)


def test_the_rate_grows_back_along_a_cubic_to_the_ceiling_then_past_it() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle("api", clock=clock)
    _sending(throttle, clock, 50, 2.0)
    throttle.throttled(clock.now)
    ceiling = 50.0
    k = math.cbrt(ceiling * (1 - BETA) / SCALE)
    rates = []
    for _step in range(1, 9):
        clock.now += k / 4
        rate = throttle.rate()
        assert rate is not None
        rates.append(rate)
    assert rates == sorted(rates)  # never falls without a 429
    assert rates[3] == pytest.approx(ceiling, rel=0.05)  # back at the ceiling after k s
    assert rates[2] - rates[1] < rates[0] - ceiling * BETA  # flat near the ceiling
    assert rates[7] > ceiling * 1.1  # then probes past it


@pytest.mark.anyio
async def test_it_turns_off_again_once_the_rate_is_well_past_the_ceiling() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle("api", clock=clock)
    _sending(throttle, clock, 50, 2.0)
    throttle.throttled(clock.now)
    ceiling = throttle.health()["ceiling"]
    assert isinstance(ceiling, float)
    assert ceiling == pytest.approx(50, rel=0.05)
    # CUBIC reaches RELEASE_FACTOR x the ceiling after k + cbrt((F - 1) * ceiling / SCALE) s.
    k = math.cbrt(ceiling * (1 - BETA) / SCALE)
    clock.now += k + math.cbrt((RELEASE_FACTOR - 1) * ceiling / SCALE) - 0.05
    await throttle.acquire(None)
    assert not throttle.off  # not quite yet
    clock.now += 0.06
    await throttle.acquire(None)
    assert throttle.off
    assert throttle.rate() is None


def test_a_429_while_throttled_cuts_from_the_lower_of_the_rate_and_the_send_rate() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle("api", clock=clock)
    _sending(throttle, clock, 100, 2.0)
    throttle.throttled(clock.now)
    _sending(throttle, clock, 40, 1.5)  # callers send less than the throttle allows
    throttle.throttled(clock.now)
    assert throttle.rate() == pytest.approx(40 * BETA, rel=0.1)
    assert throttle.throttles == 2


def test_429s_to_attempts_sent_before_the_cut_do_not_cut_again() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle("api", clock=clock)
    _sending(throttle, clock, 100, 2.0)
    in_flight_since = clock.now - 0.05  # ten attempts out when the quota ran out
    for _ in range(10):
        throttle.throttled(in_flight_since)
        clock.now += 0.001
    assert throttle.rate() == pytest.approx(100 * BETA, rel=0.05)
    assert throttle.throttles == 10
    # One sent after the cut does cut again.
    throttle.throttled(clock.now)
    assert throttle.rate() == pytest.approx(100 * BETA * BETA, rel=0.1)


def test_the_rate_never_falls_below_the_floor() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle("api", clock=clock)
    for _ in range(30):
        throttle.throttled(clock.now)
        clock.now += 0.01
    assert throttle.rate() == MIN_RATE


@pytest.mark.anyio
async def test_waiters_are_released_one_by_one_at_the_rate() -> None:
    throttle = AdaptiveThrottle("api")
    for _ in range(10):  # about 100 attempts a second
        throttle.sent()
        await asyncio.sleep(0.01)
    throttle.throttled(time.monotonic())
    rate = throttle.rate()
    assert rate is not None
    released: list[float] = []

    async def call() -> None:
        await throttle.acquire(None)
        released.append(time.monotonic())

    start = time.monotonic()
    await asyncio.gather(*(call() for _ in range(8)))
    gaps = [later - earlier for earlier, later in itertools.pairwise(released)]
    # Paced, not a stampede: every gap close to 1/rate (the loop may wake late).
    assert all(gap > 0.5 / rate for gap in gaps), gaps
    assert released[-1] - start >= 6.5 / rate


@pytest.mark.anyio
async def test_a_slot_past_the_deadline_is_refused_at_once_and_not_taken() -> None:
    throttle = AdaptiveThrottle("api")
    throttle.throttled(time.monotonic())  # nothing sent: the floor rate, one slot every 2 s
    await throttle.acquire(None)  # takes the slot now
    start = time.monotonic()
    with pytest.raises(rc.RateLimitedError, match="past the call's deadline"):
        await throttle.acquire(time.monotonic() + 0.5)
    assert time.monotonic() - start < 0.05
    # The refused caller took nothing: the next slot is still about 2 s away, not 4.
    with pytest.raises(rc.RateLimitedError, match=r"in (1\.9|2\.0)"):
        await throttle.acquire(time.monotonic() + 0.5)


def test_429s_within_the_retry_after_of_a_cut_do_not_cut_again() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle("api", clock=clock)
    _sending(throttle, clock, 100, 2.0)
    throttle.throttled(clock.now, retry_after=1.0)
    cut = throttle.rate()
    # Attempts sent after the cut, but before the spent quota frees up, draw 429s too.
    for _ in range(5):
        clock.now += 0.1
        throttle.throttled(clock.now - 0.01, retry_after=1.0)
    assert throttle.rate() == pytest.approx(cut, rel=0.2)  # grown a little, not cut
    assert throttle.throttles == 6
    clock.now += 0.6
    throttle.throttled(clock.now, retry_after=1.0)  # after the quota freed up: new evidence
    rate = throttle.rate()
    assert rate is not None
    assert cut is not None
    assert rate < cut * 0.8
