"""The circuit breaker's rules, on a fake clock: no network, no waiting."""

from __future__ import annotations

import itertools
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import httpx
import pybreaker
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)

import resilient_client as rc
from resilient_client._breaker import _WINDOW_SLICES, BreakerState, CircuitBreaker, Permit


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Transitions(pybreaker.CircuitBreakerListener):
    """Every state change pybreaker announces, in our spelling."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = "none" if old_state is None else _ours(old_state.name)
        self.seen.append((old, _ours(new_state.name)))


def _state(breaker: CircuitBreaker) -> str:
    # A plain str: mypy would otherwise keep a narrowed Literal across calls that change it.
    return breaker.state


def _ours(pybreaker_state: str) -> str:
    return pybreaker_state.replace("-", "_")


def _no_jitter() -> float:
    return 0.5  # the middle of the jitter's range: a factor of exactly 1


def _breaker(
    clock: FakeClock, random: Callable[[], float] = _no_jitter, **policy: Any
) -> tuple[CircuitBreaker, Transitions]:
    defaults: dict[str, Any] = {
        "failure_ratio": 0.5,
        "minimum_calls": 10,
        "window": 10.0,
        "consecutive_failures": None,
        "open_for": 5.0,
        "half_open_probes": 1,
    }
    defaults.update(policy)
    breaker = CircuitBreaker("payments", rc.BreakerPolicy(**defaults), clock=clock, random=random)
    transitions = Transitions()
    breaker.state_machine.add_listener(transitions)
    return breaker, transitions


def _record(breaker: CircuitBreaker, outcomes: str) -> None:
    """One admitted call per character: ``s`` succeeds, ``f`` fails."""
    for outcome in outcomes:
        permit = breaker.admit()
        if outcome == "f":
            breaker.record_failure(permit)
        else:
            breaker.record_success(permit)


def _trip(breaker: CircuitBreaker) -> None:
    while _state(breaker) == "closed":
        breaker.record_failure(breaker.admit())


# Closed: when it opens


def test_the_ratio_opens_it_only_once_minimum_calls_were_seen() -> None:
    breaker, _ = _breaker(FakeClock(), minimum_calls=10, failure_ratio=0.5)
    _record(breaker, "f" * 9)
    assert _state(breaker) == "closed"
    assert breaker.failure_ratio() == 1.0
    _record(breaker, "f")
    assert _state(breaker) == "open"
    assert breaker.health()["calls_in_window"] == 10


def test_a_success_that_completes_minimum_calls_can_open_it() -> None:
    breaker, _ = _breaker(FakeClock(), minimum_calls=4, failure_ratio=0.5)
    _record(breaker, "fff")
    _record(breaker, "s")  # 3 of 4 failed
    assert _state(breaker) == "open"


@pytest.mark.parametrize("failure_ratio", [0.1, 0.3, 0.35, 0.5, 0.7])
def test_a_ratio_just_below_the_threshold_keeps_it_closed(failure_ratio: float) -> None:
    breaker, _ = _breaker(FakeClock(), failure_ratio=failure_ratio, minimum_calls=5)
    at = round(failure_ratio * 20)  # failures out of 20 that are exactly the threshold
    _record(breaker, "s" * (20 - at) + "f" * (at - 1))  # (at - 1) / 19: just below
    assert _state(breaker) == "closed"
    _record(breaker, "f")  # at / 20, equal to the threshold despite floating point
    assert _state(breaker) == "open"


def test_consecutive_failures_open_it_before_minimum_calls() -> None:
    breaker, _ = _breaker(FakeClock(), consecutive_failures=3, minimum_calls=100)
    _record(breaker, "ffsffs")
    assert _state(breaker) == "closed"
    assert breaker.health()["consecutive_failures"] == 0
    _record(breaker, "fff")
    assert _state(breaker) == "open"
    with pytest.raises(rc.CircuitOpenError, match="after 3 consecutive failures"):
        breaker.admit()


def test_consecutive_failures_none_turns_that_rule_off() -> None:
    breaker, _ = _breaker(FakeClock(), consecutive_failures=None, minimum_calls=100)
    _record(breaker, "f" * 99)
    assert _state(breaker) == "closed"
    assert breaker.health()["consecutive_failures"] == 99


def test_the_window_slides_old_outcomes_out() -> None:
    clock = FakeClock(0.0)
    breaker, _ = _breaker(clock, window=10.0, minimum_calls=4, failure_ratio=0.5)
    _record(breaker, "fff")
    clock.advance(9.0)
    assert breaker.health()["calls_in_window"] == 3
    clock.advance(1.0)  # the failures are 10 s old now
    assert breaker.failure_ratio() is None
    assert breaker.health()["calls_in_window"] == 0
    _record(breaker, "fsss")
    assert _state(breaker) == "closed"
    assert breaker.failure_ratio() == 0.25


@pytest.mark.parametrize("offset", [0.0, 1 / 3, 0.99])
def test_an_outcome_counts_for_at_most_window_seconds(offset: float) -> None:
    width = 10.0 / _WINDOW_SLICES
    clock = FakeClock(500.0 + offset * width)  # anywhere within a slice
    breaker, _ = _breaker(clock, window=10.0)
    _record(breaker, "f")
    clock.advance(10.0 - width)  # kept for at least window minus one slice...
    assert breaker.health()["calls_in_window"] == 1
    clock.advance(width)  # ...and never once it is window seconds old
    assert breaker.failure_ratio() is None


# Open: fails fast


def test_open_fails_fast_naming_the_dependency_without_calling_anything() -> None:
    clock = FakeClock()
    breaker, transitions = _breaker(clock, consecutive_failures=2)
    _trip(breaker)
    seen = list(transitions.seen)
    sent: list[str] = []

    def call(send: Callable[[], str]) -> str:
        permit = breaker.admit()
        try:
            result = send()
        except Exception:
            breaker.record_failure(permit)
            raise
        breaker.record_success(permit)
        return result

    def send() -> str:
        sent.append("request")
        return "response"

    clock.advance(1.8)
    with pytest.raises(rc.CircuitOpenError) as caught:
        call(send)
    assert sent == []
    error = caught.value
    assert isinstance(error, httpx.TransportError)
    assert error.dependency == "payments"
    assert str(error) == (
        "dependency 'payments': circuit open for another 3.2 s "
        "(opened after 2 consecutive failures)"
    )
    assert transitions.seen == seen  # refusing changed nothing
    assert breaker.health() == {
        "state": "open",
        "failure_ratio": 1.0,
        "slow_call_ratio": None,
        "calls_in_window": 2,
        "consecutive_failures": 2,
        "open_for_remaining": 3.2,
        "open_period": 5.0,
        "failing_for": 1.8,
        "probes_in_flight": 0,
    }


def test_the_ratio_reason_is_in_the_error() -> None:
    breaker, _ = _breaker(FakeClock(), minimum_calls=4, failure_ratio=0.5)
    _record(breaker, "sfsf")
    with pytest.raises(rc.CircuitOpenError, match=r"after 2 failures in 4 calls within 10 s"):
        breaker.admit()


def test_an_idle_breaker_reports_half_open_once_open_for_passed() -> None:
    clock = FakeClock()
    breaker, transitions = _breaker(clock, consecutive_failures=1)
    _trip(breaker)
    clock.advance(4.99)
    assert _state(breaker) == "open"
    clock.advance(0.01)
    assert _state(breaker) == "half_open"
    health = breaker.health()
    assert (health["state"], health["open_for_remaining"]) == ("half_open", 0)
    json.dumps(health)
    # Reading changed nothing: pybreaker moves at the next admission.
    assert breaker.state_machine.current_state == pybreaker.STATE_OPEN
    assert transitions.seen == [("closed", "open")]
    breaker.admit()
    assert breaker.state_machine.current_state == pybreaker.STATE_HALF_OPEN
    assert transitions.seen == [("closed", "open"), ("open", "half_open")]


# Half-open: probes


def test_half_open_admits_at_most_half_open_probes_at_once() -> None:
    clock = FakeClock()
    breaker, _ = _breaker(clock, consecutive_failures=1, half_open_probes=3)
    _trip(breaker)
    clock.advance(5.0)
    probes = [breaker.admit() for _ in range(3)]
    assert all(p.probe for p in probes)
    for _ in range(2):
        with pytest.raises(
            rc.CircuitOpenError, match=r"half_open with 3 trial call\(s\) in flight"
        ):
            breaker.admit()
    assert breaker.health()["probes_in_flight"] == 3
    breaker.record_success(probes[0])  # a finished probe frees its slot
    probes[0] = breaker.admit()
    assert _state(breaker) == "half_open"


def test_it_closes_once_every_probe_succeeded_with_a_fresh_window() -> None:
    clock = FakeClock()
    breaker, transitions = _breaker(clock, consecutive_failures=3, half_open_probes=2)
    _trip(breaker)
    clock.advance(5.0)
    first, second = breaker.admit(), breaker.admit()
    breaker.record_success(first)
    assert _state(breaker) == "half_open"
    breaker.record_success(second)
    assert _state(breaker) == "closed"
    assert breaker.state_machine.current_state == pybreaker.STATE_CLOSED
    assert breaker.health() == {
        "state": "closed",
        "failure_ratio": None,
        "slow_call_ratio": None,
        "calls_in_window": 0,
        "consecutive_failures": 0,
        "open_for_remaining": 0,
        "open_period": 0,
        "failing_for": 0,
        "probes_in_flight": 0,
    }
    assert transitions.seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert not breaker.admit().probe


def test_a_failed_probe_reopens_it_for_a_fresh_open_for() -> None:
    clock = FakeClock()
    breaker, _ = _breaker(clock, consecutive_failures=1, half_open_probes=2)
    _trip(breaker)
    clock.advance(7.0)
    failing, late = breaker.admit(), breaker.admit()
    clock.advance(1.5)
    breaker.record_failure(failing)
    assert _state(breaker) == "open"
    assert breaker.health()["open_for_remaining"] == 5.0
    with pytest.raises(
        rc.CircuitOpenError, match=r"another 5\.0 s \(reopened: a trial call failed\)"
    ):
        breaker.admit()
    # The other probe of that half-open period no longer counts, either way.
    breaker.record_success(late)
    assert _state(breaker) == "open"
    clock.advance(5.0)
    assert _state(breaker) == "half_open"


def test_record_ignored_frees_a_probe_slot_and_changes_nothing_else() -> None:
    clock = FakeClock()
    breaker, transitions = _breaker(clock, consecutive_failures=1)
    _trip(breaker)
    clock.advance(5.0)
    probe = breaker.admit()
    with pytest.raises(rc.CircuitOpenError):
        breaker.admit()
    before = list(transitions.seen)
    breaker.record_ignored(probe)
    assert breaker.health()["probes_in_flight"] == 0
    assert _state(breaker) == "half_open"
    assert breaker.state_machine.success_counter == 0
    assert transitions.seen == before
    breaker.record_success(breaker.admit())
    assert _state(breaker) == "closed"


# Permits


def test_recording_a_permit_twice_does_nothing() -> None:
    clock = FakeClock()
    breaker, _ = _breaker(clock, consecutive_failures=2, half_open_probes=2)
    permit = breaker.admit()
    breaker.record_failure(permit)
    breaker.record_failure(permit)
    breaker.record_success(permit)
    breaker.record_ignored(permit)
    assert breaker.health()["calls_in_window"] == 1
    assert breaker.health()["consecutive_failures"] == 1
    assert _state(breaker) == "closed"

    _trip(breaker)
    clock.advance(5.0)
    probe, other = breaker.admit(), breaker.admit()
    breaker.record_success(probe)
    breaker.record_success(probe)  # not a second successful trial
    assert _state(breaker) == "half_open"
    breaker.record_ignored(probe)  # nor a second freed slot
    assert breaker.health()["probes_in_flight"] == 1
    breaker.record_success(other)
    assert _state(breaker) == "closed"


def test_calls_admitted_before_a_transition_do_not_count_after_it() -> None:
    clock = FakeClock()
    breaker, transitions = _breaker(clock, consecutive_failures=2)
    slow = [breaker.admit() for _ in range(3)]
    _trip(breaker)
    clock.advance(1.0)
    breaker.record_failure(slow[0])  # failing after it opened: already known
    assert breaker.health()["open_for_remaining"] == 4.0
    clock.advance(4.0)
    probe = breaker.admit()
    breaker.record_success(slow[1])  # a pre-open call is no trial: it doesn't close it
    assert _state(breaker) == "half_open"
    assert breaker.health()["probes_in_flight"] == 1
    breaker.record_success(probe)
    breaker.record_failure(slow[2])  # nor does it count in the new closed period
    assert breaker.health()["calls_in_window"] == 0
    assert [new for _, new in transitions.seen] == ["open", "half_open", "closed"]


def test_permits_say_whether_they_are_probes() -> None:
    clock = FakeClock()
    breaker, _ = _breaker(clock, consecutive_failures=1)
    permit = breaker.admit()
    assert isinstance(permit, Permit)
    assert not permit.probe
    breaker.record_failure(permit)
    clock.advance(5.0)
    assert breaker.admit().probe


# Listeners and logs


def test_each_transition_reaches_listeners_and_the_log_exactly_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="resilient_client")
    clock = FakeClock()
    breaker, transitions = _breaker(clock, consecutive_failures=2, half_open_probes=1)
    _trip(breaker)
    clock.advance(5.0)
    breaker.record_failure(breaker.admit())
    for _ in range(3):
        with pytest.raises(rc.CircuitOpenError):
            breaker.admit()
    breaker.health()
    clock.advance(5.0)
    assert _state(breaker) == "half_open"
    breaker.record_success(breaker.admit())
    breaker.record_success(breaker.admit())

    expected = [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert transitions.seen == expected
    records = [r for r in caplog.records if r.name == "resilient_client"]
    assert [r.levelno for r in records] == [logging.WARNING] * len(expected)
    assert [getattr(r, "dependency", None) for r in records] == ["payments"] * len(expected)
    assert [getattr(r, "breaker_state", None) for r in records] == [new for _, new in expected]
    messages = [r.getMessage() for r in records]
    assert messages[0] == (
        "dependency 'payments': circuit breaker closed -> open "
        "(opened after 2 consecutive failures; failing for 0 s, open for 5 s)"
    )
    assert "open -> half_open (open for 5 s; up to 1 trial call(s) at once)" in messages[1]
    assert (
        "half_open -> open (reopened: a trial call failed; failing for 5 s, open for 5 s)"
        in messages[2]
    )
    assert "half_open -> closed (1 trial call(s) succeeded)" in messages[4]


def test_a_failing_listener_neither_fails_the_call_nor_wedges_the_breaker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(pybreaker.CircuitBreakerListener):
        def state_change(
            self,
            cb: pybreaker.CircuitBreaker,
            old_state: pybreaker.CircuitBreakerState | None,
            new_state: pybreaker.CircuitBreakerState,
        ) -> None:
            raise RuntimeError("telemetry is down")

    clock = FakeClock()
    breaker, _ = _breaker(clock, consecutive_failures=1)
    breaker.state_machine.add_listener(Broken())
    breaker.record_failure(breaker.admit())
    assert _state(breaker) == "open"
    assert breaker.state_machine.current_state == pybreaker.STATE_OPEN
    assert any("listener failed" in r.getMessage() for r in caplog.records)
    clock.advance(5.0)
    breaker.record_success(breaker.admit())
    assert breaker.state_machine.current_state == pybreaker.STATE_CLOSED


# Open periods: short at first, growing while the dependency keeps failing


def _down(breaker: CircuitBreaker, clock: FakeClock, until: float) -> list[float]:
    """Probe a dependency that stays down until ``until``: the times of its probes."""
    probes: list[float] = []
    while True:
        if breaker.state == "open":
            # Straight to the end of the period, exactly (health() rounds it).
            clock.now = min(breaker._open_until, until)
        if clock.now >= until:
            return probes
        probe = breaker.admit()
        assert probe.probe
        probes.append(clock.now)
        breaker.record_failure(probe)


def test_the_first_open_period_is_open_for() -> None:
    clock = FakeClock(0.0)
    breaker, _ = _breaker(clock, consecutive_failures=1, open_for=0.5)
    _trip(breaker)
    health = breaker.health()
    assert (health["open_period"], health["open_for_remaining"], health["failing_for"]) == (
        0.5,
        0.5,
        0.0,
    )
    assert breaker.state_machine.reset_timeout == 0.5  # pybreaker mirrors the period


def test_each_period_is_growth_times_the_time_failing_so_far_within_the_bounds() -> None:
    clock = FakeClock(0.0)
    breaker, _ = _breaker(
        clock, consecutive_failures=1, open_for=0.5, open_for_growth=0.25, open_for_max=4.0
    )
    _trip(breaker)
    probes = _down(breaker, clock, until=40.0)
    # open_for until 0.25 x failing_for passes it (at 2 s), then x1.25 each time, then 4 s.
    expected = [0.5, 1.0, 1.5, 2.0, 2.5, 3.125, 3.90625, 4.8828125, 6.103515625]
    assert probes[: len(expected)] == expected
    gaps = [b - a for a, b in itertools.pairwise([0.0, *probes])]
    assert all(0.5 <= gap <= 4.0 for gap in gaps)
    assert gaps == sorted(gaps)  # growing only, while it keeps failing
    assert gaps[-1] == 4.0
    health = breaker.health()
    assert (health["open_period"], health["failing_for"]) == (4.0, 40.0)
    assert breaker.state_machine.reset_timeout == 4.0


def test_growth_zero_keeps_every_period_at_open_for() -> None:
    clock = FakeClock(0.0)
    breaker, _ = _breaker(clock, consecutive_failures=1, open_for=2.0, open_for_growth=0.0)
    _trip(breaker)
    assert _down(breaker, clock, until=60.0) == [2.0 * n for n in range(1, 30)]


def test_a_closing_success_resets_the_period_and_the_failing_time() -> None:
    clock = FakeClock(0.0)
    breaker, _ = _breaker(clock, consecutive_failures=1, open_for=0.5, open_for_growth=0.5)
    _trip(breaker)
    _down(breaker, clock, until=100.0)
    assert breaker.health()["open_period"] == 30.0
    clock.advance(30.0)
    breaker.record_success(breaker.admit())
    assert _state(breaker) == "closed"
    assert (breaker.health()["open_period"], breaker.health()["failing_for"]) == (0.0, 0.0)
    clock.advance(1.0)
    _trip(breaker)  # a new outage starts short again
    health = breaker.health()
    assert (health["open_period"], health["failing_for"]) == (0.5, 0.0)


def test_a_trial_success_that_does_not_close_it_keeps_the_failing_time() -> None:
    clock = FakeClock(0.0)
    breaker, _ = _breaker(
        clock, consecutive_failures=1, open_for=1.0, open_for_growth=0.5, half_open_probes=2
    )
    _trip(breaker)
    clock.advance(1.0)
    good, bad = breaker.admit(), breaker.admit()
    clock.advance(3.0)
    breaker.record_success(good)
    breaker.record_failure(bad)
    health = breaker.health()
    assert (health["failing_for"], health["open_period"]) == (4.0, 2.0)


def test_an_idle_half_open_period_counts_as_failing_time() -> None:
    # No evidence of recovery while nobody called: the outage is taken to have lasted.
    clock = FakeClock(0.0)
    breaker, _ = _breaker(clock, consecutive_failures=1, open_for=0.5, open_for_growth=0.2)
    _trip(breaker)
    clock.advance(100.0)
    assert breaker.health()["failing_for"] == 100.0
    breaker.record_failure(breaker.admit())
    assert breaker.health()["open_period"] == 20.0


def test_jitter_spreads_each_period_within_its_share_and_the_bounds() -> None:
    clock = FakeClock(0.0)
    policy = {
        "consecutive_failures": 1,
        "open_for": 1.0,
        "open_for_growth": 0.2,
        "open_for_jitter": 0.25,
    }
    low, _ = _breaker(clock, random=lambda: 0.0, **policy)
    high, _ = _breaker(clock, random=lambda: 0.999, **policy)
    for breaker in (low, high):
        _trip(breaker)
    # Never shorter than open_for...
    assert low.health()["open_period"] == 1.0
    assert high.health()["open_period"] == pytest.approx(1.25, abs=0.001)
    clock.advance(100.0)
    for breaker in (low, high):
        breaker.record_failure(breaker.admit())
    # ...0.2 x 100 s is 20 s, +-25%...
    assert low.health()["open_period"] == 15.0
    assert high.health()["open_period"] == pytest.approx(25.0, abs=0.02)
    clock.advance(200.0)
    for breaker in (low, high):
        breaker.record_failure(breaker.admit())
    # ...nor longer than open_for_max: 0.2 x 300 s is 60 s, capped at 30 s before the jitter.
    assert low.health()["open_period"] == 30.0 * 0.75
    assert high.health()["open_period"] == 30.0


def test_replicas_with_their_own_random_source_do_not_probe_in_step() -> None:
    schedules = []
    for seed in (1, 2):
        clock = FakeClock(0.0)
        breaker, _ = _breaker(
            clock, random=random.Random(seed).random, consecutive_failures=1, open_for=0.5
        )
        _trip(breaker)
        probes = _down(breaker, clock, until=60.0)
        gaps = [b - a for a, b in itertools.pairwise([0.0, *probes])]
        assert all(0.5 <= gap <= 30.0 for gap in gaps)
        schedules.append(probes)
    assert schedules[0] != schedules[1]


def test_no_jitter_draws_nothing() -> None:
    def never() -> float:
        raise AssertionError("drew a random number")

    clock = FakeClock(0.0)
    breaker, _ = _breaker(clock, random=never, consecutive_failures=1, open_for_jitter=0.0)
    _trip(breaker)
    _down(breaker, clock, until=30.0)


@dataclass
class Outage:
    recovered_after: float  # from the host's return to the first success of the rest
    requests_per_call: float  # upstream requests per call while the host was down
    probe_gaps: list[float]


def _outage(seconds: float, seed: int, rate: int = 100) -> Outage:
    """Calls at ``rate`` per second, one attempt each, the default policy; the host is
    down from 1 s for ``seconds``, then answers again. Time in whole milliseconds."""
    clock = FakeClock(0.0)
    breaker = CircuitBreaker(
        "outage", rc.BreakerPolicy(), clock=clock, random=random.Random(seed).random
    )
    down_from, back_at = 1000, 1000 + round(seconds * 1000)
    step = 1000 // rate
    calls = requests = 0
    probes: list[float] = []
    recovered_at: int | None = None
    for ms in range(0, back_at + 5000 + back_at // 4, step):
        clock.now = ms / 1000
        down = down_from <= ms < back_at
        calls += down
        try:
            permit = breaker.admit()
        except rc.CircuitOpenError:
            if ms >= back_at:
                recovered_at = None  # not sustained yet
            continue
        requests += down
        if permit.probe and down:
            probes.append(clock.now)
        if down:
            breaker.record_failure(permit)
        else:
            breaker.record_success(permit)
            if ms >= back_at and recovered_at is None:
                recovered_at = ms
    assert recovered_at is not None
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    return Outage((recovered_at - back_at) / 1000, requests / calls, gaps)


@pytest.mark.parametrize("seconds", [3.0, 6.0])
def test_after_a_short_outage_calls_succeed_within_1_5_s_at_little_cost(seconds: float) -> None:
    # The target, at the breaker's level: 100 calls/s, every phase we try.
    for seed in range(40):
        outage = _outage(seconds + seed * 0.0137, seed)
        assert outage.recovered_after <= 1.5, (seed, outage)
        assert outage.requests_per_call <= 0.1, (seed, outage)


def test_a_long_outage_is_probed_about_every_30_s_and_no_more_often() -> None:
    outage = _outage(600.0, seed=7)
    assert outage.requests_per_call < 0.001
    assert max(outage.probe_gaps) <= 30.01  # calls come every 10 ms
    assert min(outage.probe_gaps[-10:]) >= 27.0  # the cap, less its jitter
    assert len(outage.probe_gaps) < 60


def test_bad_open_periods_fail_at_load_naming_both_settings() -> None:
    with pytest.raises(ValueError, match=r"open_for \(40\.0\) must be <= open_for_max \(30\.0\)"):
        rc.BreakerPolicy(open_for=40.0)
    with pytest.raises(rc.SettingsError, match="open_for_max"):
        rc.ResilienceSettings.from_mapping(
            {"default": {"breaker": {"open_for": 2.0, "open_for_max": 1.0}}}
        )
    for bad in (
        {"open_for_max": 0},
        {"open_for_growth": -0.1},
        {"open_for_jitter": 1.0},
        {"slow_call_duration": 0},
        {"slow_call_ratio": 0},
        {"slow_call_ratio": 1.5},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            rc.BreakerPolicy(**bad)


def test_the_defaults() -> None:
    policy = rc.BreakerPolicy()
    assert (policy.open_for, policy.open_for_max) == (0.5, 30.0)
    assert (policy.open_for_growth, policy.open_for_jitter) == (0.15, 0.1)
    assert (policy.slow_call_duration, policy.slow_call_ratio) == (None, 0.8)
    # An old setting of open_for up to the maximum still loads.
    assert rc.BreakerPolicy(open_for=30.0).open_for == 30.0


# Slow calls


def _slow(breaker: CircuitBreaker, clock: FakeClock, outcomes: str, took: float) -> None:
    """Calls admitted together, finishing ``took`` later: ``s`` succeeds, ``f`` fails."""
    permits = [(breaker.admit(), outcome) for outcome in outcomes]
    clock.advance(took)
    for permit, outcome in permits:
        if outcome == "f":
            breaker.record_failure(permit)
        else:
            breaker.record_success(permit)


def test_slow_successes_open_it_once_their_share_reaches_slow_call_ratio() -> None:
    clock = FakeClock()
    breaker, _ = _breaker(
        clock, slow_call_duration=1.0, slow_call_ratio=0.75, minimum_calls=4, failure_ratio=1.0
    )
    _slow(breaker, clock, "ss", took=0.1)
    _slow(breaker, clock, "sssss", took=1.5)
    assert _state(breaker) == "closed"  # 5 of 7 slow
    assert breaker.health()["slow_call_ratio"] == 5 / 7
    _slow(breaker, clock, "s", took=1.01)  # 6 of 8
    assert _state(breaker) == "open"
    with pytest.raises(
        rc.CircuitOpenError,
        match=r"opened after 6 slow calls \(over slow_call_duration=1 s\) in 8 calls within 10 s",
    ):
        breaker.admit()


def test_slow_calls_need_minimum_calls_too() -> None:
    clock = FakeClock()
    breaker, _ = _breaker(clock, slow_call_duration=1.0, slow_call_ratio=0.5, minimum_calls=5)
    _slow(breaker, clock, "ssss", took=2.0)
    assert _state(breaker) == "closed"
    assert breaker.health()["slow_call_ratio"] == 1.0


def test_a_call_of_exactly_slow_call_duration_is_not_slow() -> None:
    clock = FakeClock(0.0)
    breaker, _ = _breaker(clock, slow_call_duration=0.5, slow_call_ratio=0.5, minimum_calls=2)
    _slow(breaker, clock, "ss", took=0.5)
    assert _state(breaker) == "closed"
    assert breaker.health()["slow_call_ratio"] == 0.0


def test_slow_calls_never_open_it_with_the_rule_off() -> None:
    clock = FakeClock()
    breaker, _ = _breaker(clock, minimum_calls=2)
    _slow(breaker, clock, "ssss", took=600.0)
    assert _state(breaker) == "closed"
    assert breaker.health()["slow_call_ratio"] is None


def test_with_the_rule_off_a_closed_admission_reads_no_clock() -> None:
    reads: list[float] = []

    class CountingClock(FakeClock):
        def __call__(self) -> float:
            reads.append(self.now)
            return self.now

    clock = CountingClock()
    breaker, _ = _breaker(clock)
    for _ in range(5):
        breaker.admit()
    assert reads == []
    on, _ = _breaker(clock, slow_call_duration=1.0)
    on.admit()
    assert len(reads) == 1


def test_failures_are_not_slow_calls() -> None:
    clock = FakeClock()
    breaker, _ = _breaker(
        clock, slow_call_duration=1.0, slow_call_ratio=0.5, minimum_calls=4, failure_ratio=1.0
    )
    _slow(breaker, clock, "fff", took=5.0)
    _slow(breaker, clock, "s", took=5.0)
    assert _state(breaker) == "closed"  # 1 slow of 4: the failures count as failures only
    assert breaker.health()["slow_call_ratio"] == 0.25
    assert breaker.failure_ratio() == 0.75


def test_a_slow_success_still_ends_a_run_of_failures() -> None:
    clock = FakeClock()
    breaker, _ = _breaker(clock, slow_call_duration=1.0, consecutive_failures=3)
    _record(breaker, "ff")
    _slow(breaker, clock, "s", took=2.0)
    _record(breaker, "ff")
    assert _state(breaker) == "closed"


def test_a_fast_success_that_completes_minimum_calls_can_open_it_on_slow_calls() -> None:
    clock = FakeClock()
    breaker, _ = _breaker(clock, slow_call_duration=1.0, slow_call_ratio=0.75, minimum_calls=4)
    _slow(breaker, clock, "sss", took=2.0)
    _slow(breaker, clock, "s", took=0.1)
    assert _state(breaker) == "open"


def test_a_failure_that_completes_minimum_calls_can_open_it_on_slow_calls() -> None:
    # Found in review: only successes checked the slow-call share at first.
    clock = FakeClock()
    breaker, _ = _breaker(
        clock, slow_call_duration=1.0, slow_call_ratio=0.75, minimum_calls=4, failure_ratio=1.0
    )
    _slow(breaker, clock, "sss", took=2.0)
    _slow(breaker, clock, "f", took=0.1)
    assert _state(breaker) == "open"
    with pytest.raises(rc.CircuitOpenError, match="3 slow calls"):
        breaker.admit()


def test_when_failures_and_slow_calls_both_reach_their_share_it_opens_once() -> None:
    clock = FakeClock()
    breaker, transitions = _breaker(
        clock, slow_call_duration=1.0, slow_call_ratio=0.5, minimum_calls=4, failure_ratio=0.25
    )
    _slow(breaker, clock, "f", took=0.1)
    _slow(breaker, clock, "sss", took=2.0)
    assert transitions.seen == [("closed", "open")]
    with pytest.raises(rc.CircuitOpenError, match="1 failures in 4 calls"):
        breaker.admit()


def test_a_slow_trial_call_reopens_it_with_a_longer_period() -> None:
    clock = FakeClock(0.0)
    breaker, transitions = _breaker(
        clock,
        slow_call_duration=1.0,
        consecutive_failures=1,
        open_for=1.0,
        open_for_growth=0.5,
    )
    _trip(breaker)
    clock.advance(3.0)
    _slow(breaker, clock, "s", took=1.25)
    assert _state(breaker) == "open"
    assert transitions.seen[-1] == ("half_open", "open")
    health = breaker.health()
    assert (health["open_period"], health["failing_for"]) == (2.125, 4.25)
    with pytest.raises(
        rc.CircuitOpenError,
        match=r"reopened: a trial call was slow \(1\.25 s > slow_call_duration=1 s\)",
    ):
        breaker.admit()
    clock.advance(2.125)
    _slow(breaker, clock, "s", took=1.0)  # not slow: closes
    assert _state(breaker) == "closed"


def test_slow_calls_leave_the_window_with_their_slice() -> None:
    clock = FakeClock(0.0)
    breaker, _ = _breaker(clock, slow_call_duration=1.0, slow_call_ratio=0.5, minimum_calls=4)
    _slow(breaker, clock, "ss", took=2.0)
    clock.advance(10.0)
    assert breaker.health()["slow_call_ratio"] is None
    _slow(breaker, clock, "ss", took=2.0)
    _slow(breaker, clock, "s", took=0.1)
    assert _state(breaker) == "closed"  # 2 of 3 slow: the first two are gone
    _slow(breaker, clock, "s", took=0.1)
    assert _state(breaker) == "open"  # 2 of 4: at the share


# The rules as a model, checked against every sequence hypothesis can find

TICK = Fraction(1, 8)  # the clock moves in exact binary steps, so model and breaker agree on time
SLICE_TICKS = 4  # the window below is _WINDOW_SLICES slices of 0.5 s
WINDOW = _WINDOW_SLICES * SLICE_TICKS * TICK
# Failures twice as likely as each of the others, so runs reach open and half-open often.
OUTCOMES = st.sampled_from(["failure", "success", "failure", "ignored"])


@dataclass
class Ticket:
    """An admitted permit and what the model knows about it."""

    permit: Permit
    period: int
    probe: bool
    admitted: int  # ticks
    recorded: bool = False


class BreakerModel(RuleBasedStateMachine):
    """The rules restated as simply as possible, in exact fractions of a second.

    Every number the breaker computes with is a small binary fraction here (ticks of
    1/8 s, growth and jitter in eighths), so its floats are exact and the model can ask
    for equality, boundaries included.
    """

    tickets = Bundle("tickets")

    def __init__(self) -> None:
        super().__init__()
        self.ticks = 0
        self.clock = FakeClock(0.0)
        self.stored: BreakerState = "closed"
        self.open_until = Fraction(0)
        self.open_period = Fraction(0)  # the current (or last) one; 0 while closed
        self.failing_since: Fraction | None = None
        self.periods: list[Fraction] = []  # of the current failing episode, unjittered
        self.outcomes: list[tuple[int, bool, bool]] = []  # (slice index, failed, slow)
        self.consecutive = 0
        self.probes = 0
        self.successes = 0
        self.period = 0
        self.draw = Fraction(1, 2)  # what the breaker's random source returns next
        self.expected: list[tuple[str, str]] = []

    @initialize(
        failure_ratio=st.sampled_from([0.25, 0.5, 1.0]),
        minimum_calls=st.integers(1, 6),
        consecutive_failures=st.sampled_from([None, 1, 2, 3]),
        open_for_ticks=st.integers(1, 24),
        extra_ticks=st.sampled_from([0, 1, 8, 40, 400]),
        growth=st.sampled_from([0, 0.125, 0.25, 0.5, 1.0]),
        jitter=st.sampled_from([0, 0.125, 0.25]),
        half_open_probes=st.integers(1, 3),
        slow_ticks=st.sampled_from([None, 0, 1, 3, 8]),
        slow_call_ratio=st.sampled_from([0.25, 0.5, 1.0]),
    )
    def build(
        self,
        failure_ratio: float,
        minimum_calls: int,
        consecutive_failures: int | None,
        open_for_ticks: int,
        extra_ticks: int,
        growth: float,
        jitter: float,
        half_open_probes: int,
        slow_ticks: int | None,
        slow_call_ratio: float,
    ) -> None:
        self.open_for = open_for_ticks * TICK
        self.open_for_max = (open_for_ticks + extra_ticks) * TICK
        self.growth = Fraction(growth)
        self.jitter = Fraction(jitter)
        # slow_call_duration must be > 0: 0 ticks stands for the smallest, 1/64 s.
        self.slow: Fraction | None = None
        if slow_ticks is not None:
            self.slow = slow_ticks * TICK if slow_ticks else Fraction(1, 64)
        self.policy = rc.BreakerPolicy(
            failure_ratio=failure_ratio,
            minimum_calls=minimum_calls,
            window=float(WINDOW),
            consecutive_failures=consecutive_failures,
            open_for=float(self.open_for),
            open_for_max=float(self.open_for_max),
            open_for_growth=growth,
            open_for_jitter=jitter,
            half_open_probes=half_open_probes,
            slow_call_duration=None if self.slow is None else float(self.slow),
            slow_call_ratio=slow_call_ratio,
        )
        self.breaker = CircuitBreaker(
            "model", self.policy, clock=self.clock, random=lambda: float(self.draw)
        )
        self.transitions = Transitions()
        self.breaker.state_machine.add_listener(self.transitions)

    # the model

    @property
    def now(self) -> Fraction:
        return self.ticks * TICK

    def _counted(self) -> list[tuple[int, bool, bool]]:
        now = self.ticks // SLICE_TICKS
        return [o for o in self.outcomes if now - o[0] < _WINDOW_SLICES]

    def _effective(self) -> BreakerState:
        if self.stored == "open" and self.now >= self.open_until:
            return "half_open"
        return self.stored

    def _move(self, new: BreakerState) -> None:
        self.expected.append((self.stored, new))
        self.stored = new
        self.period += 1
        self.probes = 0
        self.successes = 0
        if new == "closed":
            self.outcomes = []
            self.consecutive = 0
            self.failing_since = None
            self.open_period = Fraction(0)
            self.periods = []
        if new == "open":
            if self.failing_since is None:
                self.failing_since = self.now
            failing_for = self.now - self.failing_since
            period = min(max(self.growth * failing_for, self.open_for), self.open_for_max)
            self.periods.append(period)
            period *= 1 + self.jitter * (2 * self.draw - 1)
            self.open_period = min(max(period, self.open_for), self.open_for_max)
            self.open_until = self.now + self.open_period

    def _admit(self) -> Ticket | None:
        if self.stored == "open" and self.now >= self.open_until:
            self._move("half_open")
        refused = self.stored == "open" or (
            self.stored == "half_open" and self.probes >= self.policy.half_open_probes
        )
        if refused:
            with pytest.raises(rc.CircuitOpenError, match="'model'"):
                self.breaker.admit()
            return None
        permit = self.breaker.admit()
        probe = self.stored == "half_open"
        self.probes += probe
        assert permit.probe == probe
        return Ticket(permit, self.period, probe, self.ticks)

    def _share(self, counted: list[tuple[int, bool, bool]], index: int) -> Fraction:
        return Fraction(sum(o[index] for o in counted), len(counted))

    def _finish(self, ticket: Ticket, outcome: str) -> None:
        record = {
            "success": self.breaker.record_success,
            "failure": self.breaker.record_failure,
            "ignored": self.breaker.record_ignored,
        }[outcome]
        record(ticket.permit)
        if ticket.recorded or ticket.period != self.period:
            ticket.recorded = True
            return
        ticket.recorded = True
        took = (self.ticks - ticket.admitted) * TICK
        slow = outcome == "success" and self.slow is not None and took > self.slow
        if ticket.probe:
            self.probes -= 1
            if outcome == "success" and not slow:
                self.successes += 1
                if self.successes >= self.policy.half_open_probes:
                    self._move("closed")
            elif outcome != "ignored":
                self._move("open")  # a failed or slow trial call
            return
        if outcome == "ignored":
            return
        failed = outcome == "failure"
        self.outcomes.append((self.ticks // SLICE_TICKS, failed, slow))
        self.consecutive = self.consecutive + 1 if failed else 0
        limit = self.policy.consecutive_failures
        counted = self._counted()
        enough = len(counted) >= self.policy.minimum_calls
        run_too_long = failed and limit is not None and self.consecutive >= limit
        failing = enough and self._share(counted, 1) >= Fraction(self.policy.failure_ratio)
        too_slow = (
            enough
            and self.slow is not None
            and self._share(counted, 2) >= Fraction(self.policy.slow_call_ratio)
        )
        if run_too_long or failing or too_slow:
            self._move("open")

    # the rules: calls that finish at once, calls that stay in flight, time passing

    @rule(outcome=OUTCOMES)
    def call(self, outcome: str) -> None:
        ticket = self._admit()
        if ticket is not None:
            self._finish(ticket, outcome)

    @rule()
    def call_that_succeeds(self) -> None:
        # Recovery needs every probe of a half-open period to succeed: make runs of
        # successes likely enough that closing again is explored, not just reopening.
        self.call("success")

    @rule(outcome=OUTCOMES, ticks=st.integers(1, 12))
    def call_that_takes_a_while(self, outcome: str, ticks: int) -> None:
        ticket = self._admit()
        self.wait(ticks)
        if ticket is not None:
            self._finish(ticket, outcome)

    @rule(target=tickets)
    def admit(self) -> Any:
        ticket = self._admit()
        return multiple() if ticket is None else ticket

    @rule(ticket=tickets, outcome=OUTCOMES)
    def finish(self, ticket: Ticket, outcome: str) -> None:
        # Bundles hand out finished tickets again too: that is the idempotence check.
        self._finish(ticket, outcome)

    @rule(ticks=st.one_of(st.integers(0, 6), st.integers(20, 100), st.integers(400, 4000)))
    def wait(self, ticks: int) -> None:
        self.ticks += ticks
        self.clock.now = float(self.now)

    @rule(eighths=st.integers(0, 7))
    def next_draw(self, eighths: int) -> None:
        self.draw = Fraction(eighths, 8)

    # what must always hold

    @invariant()
    def state_matches_the_model(self) -> None:
        assert self.breaker.state == self._effective()

    @invariant()
    def pybreaker_holds_the_settled_state(self) -> None:
        # Equal to ours whenever ours is settled; behind only while the open period
        # has passed and nothing was admitted since (the lazy open -> half_open).
        machine = self.breaker.state_machine
        pybreaker_state = _ours(machine.current_state)
        assert pybreaker_state == self.stored
        if self._effective() == self.stored:
            assert pybreaker_state == self.breaker.state
        if self.stored != "closed":
            assert machine.reset_timeout == self.open_period

    @invariant()
    def probes_stay_within_the_cap(self) -> None:
        probes = self.breaker.health()["probes_in_flight"]
        assert isinstance(probes, int)
        assert 0 <= probes <= self.policy.half_open_probes

    @invariant()
    def open_periods_stay_within_bounds_and_grow_only_while_failing(self) -> None:
        if self.stored == "closed":
            assert self.open_period == 0
            assert self.failing_since is None
        else:
            assert self.open_for <= self.open_period <= self.open_for_max
        assert self.periods == sorted(self.periods)

    @invariant()
    def health_matches_the_model(self) -> None:
        counted = self._counted()
        remaining = self.open_until - self.now if self.stored == "open" else Fraction(0)
        since = self.failing_since
        assert self.breaker.health() == {
            "state": self._effective(),
            "failure_ratio": float(self._share(counted, 1)) if counted else None,
            "slow_call_ratio": (
                float(self._share(counted, 2)) if counted and self.slow is not None else None
            ),
            "calls_in_window": len(counted),
            "consecutive_failures": self.consecutive,
            "open_for_remaining": round(float(max(remaining, Fraction(0))), 3),
            "open_period": round(float(self.open_period), 3),
            "failing_for": 0.0 if since is None else round(float(self.now - since), 3),
            "probes_in_flight": self.probes,
        }

    @invariant()
    def listeners_saw_each_transition_once(self) -> None:
        assert self.transitions.seen == self.expected


BreakerModel.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestBreakerModel = BreakerModel.TestCase
