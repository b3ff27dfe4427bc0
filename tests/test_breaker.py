"""The circuit breaker's rules, on a fake clock: no network, no waiting."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
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


def _breaker(clock: FakeClock, **policy: Any) -> tuple[CircuitBreaker, Transitions]:
    defaults: dict[str, Any] = {
        "failure_ratio": 0.5,
        "minimum_calls": 10,
        "window": 10.0,
        "consecutive_failures": None,
        "open_for": 5.0,
        "half_open_probes": 1,
    }
    defaults.update(policy)
    breaker = CircuitBreaker("payments", rc.BreakerPolicy(**defaults), clock=clock)
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
        "calls_in_window": 2,
        "consecutive_failures": 2,
        "open_for_remaining": 3.2,
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
        "calls_in_window": 0,
        "consecutive_failures": 0,
        "open_for_remaining": 0,
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
        "(opened after 2 consecutive failures)"
    )
    assert "open -> half_open (open_for=5 s elapsed" in messages[1]
    assert "half_open -> open (reopened: a trial call failed)" in messages[2]
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


# The rules as a model, checked against every sequence hypothesis can find

TICK = 0.125  # the clock moves in exact binary steps, so model and breaker agree on time
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
    recorded: bool = False


class BreakerModel(RuleBasedStateMachine):
    tickets = Bundle("tickets")

    def __init__(self) -> None:
        super().__init__()
        self.ticks = 0
        self.clock = FakeClock(0.0)
        self.stored: BreakerState = "closed"
        self.open_until = 0  # ticks
        self.outcomes: list[tuple[int, bool]] = []  # (slice index, failed)
        self.consecutive = 0
        self.probes = 0
        self.successes = 0
        self.period = 0
        self.expected: list[tuple[str, str]] = []

    @initialize(
        failure_ratio=st.sampled_from([0.25, 0.5, 1.0]),
        minimum_calls=st.integers(1, 6),
        consecutive_failures=st.sampled_from([None, 1, 2, 3]),
        open_for_ticks=st.integers(1, 24),
        half_open_probes=st.integers(1, 3),
    )
    def build(
        self,
        failure_ratio: float,
        minimum_calls: int,
        consecutive_failures: int | None,
        open_for_ticks: int,
        half_open_probes: int,
    ) -> None:
        self.policy = rc.BreakerPolicy(
            failure_ratio=failure_ratio,
            minimum_calls=minimum_calls,
            window=WINDOW,
            consecutive_failures=consecutive_failures,
            open_for=open_for_ticks * TICK,
            half_open_probes=half_open_probes,
        )
        self.open_for_ticks = open_for_ticks
        self.breaker = CircuitBreaker("model", self.policy, clock=self.clock)
        self.transitions = Transitions()
        self.breaker.state_machine.add_listener(self.transitions)

    # the model

    def _counted(self) -> list[tuple[int, bool]]:
        now = self.ticks // SLICE_TICKS
        return [o for o in self.outcomes if now - o[0] < _WINDOW_SLICES]

    def _effective(self) -> BreakerState:
        if self.stored == "open" and self.ticks >= self.open_until:
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
        if new == "open":
            self.open_until = self.ticks + self.open_for_ticks

    def _admit(self) -> Ticket | None:
        if self.stored == "open" and self.ticks >= self.open_until:
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
        return Ticket(permit, self.period, probe)

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
        if ticket.probe:
            self.probes -= 1
            if outcome == "success":
                self.successes += 1
                if self.successes >= self.policy.half_open_probes:
                    self._move("closed")
            elif outcome == "failure":
                self._move("open")
            return
        if outcome == "ignored":
            return
        failed = outcome == "failure"
        self.outcomes.append((self.ticks // SLICE_TICKS, failed))
        self.consecutive = self.consecutive + 1 if failed else 0
        limit = self.policy.consecutive_failures
        counted = self._counted()
        failures = sum(failed for _, failed in counted)
        run_too_long = failed and limit is not None and self.consecutive >= limit
        ratio_too_high = len(counted) >= self.policy.minimum_calls and (
            failures / len(counted) >= self.policy.failure_ratio
        )
        if run_too_long or ratio_too_high:
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

    @rule(target=tickets)
    def admit(self) -> Any:
        ticket = self._admit()
        return multiple() if ticket is None else ticket

    @rule(ticket=tickets, outcome=OUTCOMES)
    def finish(self, ticket: Ticket, outcome: str) -> None:
        # Bundles hand out finished tickets again too: that is the idempotence check.
        self._finish(ticket, outcome)

    @rule(ticks=st.one_of(st.integers(0, 6), st.integers(20, 100)))
    def wait(self, ticks: int) -> None:
        self.ticks += ticks
        self.clock.now = self.ticks * TICK

    # what must always hold

    @invariant()
    def state_matches_the_model(self) -> None:
        assert self.breaker.state == self._effective()

    @invariant()
    def pybreaker_holds_the_settled_state(self) -> None:
        # Equal to ours whenever ours is settled; behind only while open_for has
        # passed and nothing was admitted since (the lazy open -> half_open).
        pybreaker_state = _ours(self.breaker.state_machine.current_state)
        assert pybreaker_state == self.stored
        if self._effective() == self.stored:
            assert pybreaker_state == self.breaker.state

    @invariant()
    def probes_stay_within_the_cap(self) -> None:
        probes = self.breaker.health()["probes_in_flight"]
        assert isinstance(probes, int)
        assert 0 <= probes <= self.policy.half_open_probes

    @invariant()
    def health_matches_the_model(self) -> None:
        counted = self._counted()
        failures = sum(failed for _, failed in counted)
        remaining = (self.open_until - self.ticks) * TICK if self.stored == "open" else 0.0
        assert self.breaker.health() == {
            "state": self._effective(),
            "failure_ratio": failures / len(counted) if counted else None,
            "calls_in_window": len(counted),
            "consecutive_failures": self.consecutive,
            "open_for_remaining": max(remaining, 0.0),
            "probes_in_flight": self.probes,
        }

    @invariant()
    def listeners_saw_each_transition_once(self) -> None:
        assert self.transitions.seen == self.expected


BreakerModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestBreakerModel = BreakerModel.TestCase
