"""A retry budget bounds what retries add to a dependency's load, whatever the retry policy says."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_client._budget import RetryBudget

# Float noise allowed when comparing with the rule computed independently here.
EPSILON = 1e-6


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _outage(
    ratio: float, min_per_second: float, *, per_second: int, seconds: int, window: float = 10.0
) -> tuple[int, int]:
    """Steady traffic to a dependency that fails every attempt; each call wants 2 retries.

    Returns (calls, attempts). A call stops retrying at the first retry the budget refuses.
    """
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio, min_per_second, window=window, clock=clock)
    calls = attempts = 0
    for second in range(seconds):
        for k in range(per_second):
            clock.now = second + k / per_second
            budget.record_request()
            calls += 1
            attempts += 1
            for _ in range(2):
                if not budget.try_spend():
                    break
                attempts += 1
    return calls, attempts


@pytest.mark.parametrize(
    ("ratio", "min_per_second", "per_second"),
    [(0.2, 3.0, 100), (0.1, 10.0, 50), (0.5, 0.0, 20), (0.2, 3.0, 7), (0.25, 1.5, 400)],
)
def test_a_full_outage_costs_one_plus_ratio_times_the_traffic_plus_the_reserve(
    ratio: float, min_per_second: float, per_second: int
) -> None:
    seconds, window = 300, 10.0
    calls, attempts = _outage(ratio, min_per_second, per_second=per_second, seconds=seconds)
    assert calls == per_second * seconds
    # Each window (10 whole seconds here) grants at most ratio x its calls plus the
    # reserve min_per_second x window; the steady traffic fills every window alike.
    windows = math.ceil(seconds / window)
    bound = calls * (1 + ratio) + min_per_second * window * windows
    assert attempts <= bound + EPSILON
    # ... and the budget is not stingier than that: at most a fraction of a retry
    # per window stays unspent.
    assert attempts > bound - windows
    # Per call: 1 + ratio + min_per_second / per_second, not the 3 attempts asked for.
    assert attempts / calls <= 1 + ratio + min_per_second / per_second + EPSILON


def test_the_cost_per_call_converges_to_one_plus_ratio_as_traffic_grows() -> None:
    costs = [
        _outage(0.2, 3.0, per_second=per_second, seconds=60)[1] / (per_second * 60)
        for per_second in (10, 100, 1000)
    ]
    assert costs == sorted(costs, reverse=True)
    assert costs[-1] == pytest.approx(1.2, abs=0.005)


def test_without_any_budget_nothing_is_ever_retried() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.0, 0.0, clock=clock)
    for _ in range(100):
        budget.record_request()
        assert not budget.try_spend()
        clock.now += 0.37
    assert budget.available() == 0.0


def test_the_budget_refills_as_old_seconds_leave_the_window() -> None:
    clock = FakeClock(100.0)
    budget = RetryBudget(0.5, 1.0, window=10.0, clock=clock)  # reserve: 10 retries
    clock.now = 100.2
    for _ in range(10):
        budget.record_request()  # +5 retries
    spent_first = _spend_all(budget)
    assert spent_first == 15

    clock.now = 104.5
    for _ in range(4):
        budget.record_request()  # +2 retries
    assert _spend_all(budget) == 2

    clock.now = 109.999  # second 100 is still inside the window
    assert budget.available() == 0.0
    clock.now = 110.0  # second 100 has left, with its 10 calls and 15 retries
    # Left: 4 calls (x 0.5) + reserve 10 - 2 spent in second 104.
    assert budget.available() == pytest.approx(10.0)
    assert _spend_all(budget) == 10
    clock.now = 114.0  # second 104 leaves: its 2 calls and 2 retries
    assert budget.available() == pytest.approx(0.0)
    clock.now = 115.0
    assert budget.available() == pytest.approx(0.0)  # the 10 spent at 110 still count
    clock.now = 120.0
    assert budget.available() == pytest.approx(10.0)  # all expired: the reserve again


def test_a_long_idle_spell_expires_everything_at_once() -> None:
    clock = FakeClock(5.0)
    budget = RetryBudget(1.0, 0.0, window=3.0, clock=clock)
    for _ in range(7):
        budget.record_request()
    assert _spend_all(budget) == 7
    clock.now += 3600.0
    assert budget.available() == 0.0  # the calls left too
    budget.record_request()
    assert budget.try_spend()


def test_min_per_second_alone_allows_a_trickle_without_traffic() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(0.0, 2.0, window=5.0, clock=clock)
    granted_at: list[float] = []
    # A caller that would retry ten times a second, with no calls recorded at all.
    for tick in range(600):
        clock.now = tick / 10
        if budget.try_spend():
            granted_at.append(clock.now)
    # Retries start at once (the reserve does not wait for traffic) ...
    assert granted_at[0] == 0.0
    # ... average min_per_second over the minute ...
    assert len(granted_at) == 2 * 60
    # ... and no 5 seconds in a row ever hold more than the reserve.
    for start in range(60):
        assert sum(1 for t in granted_at if start <= t < start + 5) <= 10


def test_a_fractional_allowance_is_not_lost_to_float_rounding() -> None:
    budget = RetryBudget(0.29, 0.0, clock=FakeClock())
    for _ in range(100):
        budget.record_request()
    # 0.29 * 100 is 28.999999999999996 in floats; the rule says 29.
    assert budget.available() == 29.0
    assert _spend_all(budget) == 29


@pytest.mark.parametrize(
    ("ratio", "min_per_second", "window"),
    [
        (-0.1, 1.0, 10.0),
        (0.2, -1.0, 10.0),
        (math.nan, 1.0, 10.0),
        (0.2, math.inf, 10.0),
        (0.2, 1.0, 0.0),
        (0.2, 1.0, math.nan),
    ],
)
def test_nonsense_parameters_are_refused(
    ratio: float, min_per_second: float, window: float
) -> None:
    with pytest.raises(ValueError, match="must be"):
        RetryBudget(ratio, min_per_second, window=window)


@settings(max_examples=300, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.29, 0.5, 1.0, 3.0]),
    min_per_second=st.sampled_from([0.0, 0.3, 1.0, 3.0]),
    window=st.sampled_from([0.5, 1.0, 2.5, 3.0, 10.0]),
    operations=st.lists(
        st.one_of(
            st.just("request"),
            st.just("spend"),
            st.just("available"),
            st.floats(min_value=0.0, max_value=4.0),  # clock advance, seconds
        ),
        max_size=200,
    ),
)
def test_the_budget_follows_its_rule_exactly_for_any_interleaving(
    ratio: float, min_per_second: float, window: float, operations: list[str | float]
) -> None:
    """Checked against a naive model: a log of every call and granted retry, with its second."""
    clock = FakeClock(37.3)
    budget = RetryBudget(ratio, min_per_second, window=window, clock=clock)
    buckets = math.ceil(window)
    reserve = min_per_second * window
    requests: list[int] = []  # the second of each recorded call
    retries: list[int] = []  # the second of each granted retry

    def rule_now() -> tuple[float, int]:
        """(allowance, retries spent) over the window ending with the current second."""
        now = math.floor(clock.now)
        first = now - buckets + 1
        calls = sum(1 for s in requests if first <= s <= now)
        spent = sum(1 for s in retries if first <= s <= now)
        return ratio * calls + reserve, spent

    for operation in operations:
        if isinstance(operation, float):
            clock.now += operation
        elif operation == "request":
            budget.record_request()
            requests.append(math.floor(clock.now))
        elif operation == "spend":
            available = budget.available()
            allowance, spent = rule_now()
            granted = budget.try_spend()
            # available() predicts try_spend() exactly.
            assert granted == (available >= 1.0)
            if granted:
                retries.append(math.floor(clock.now))
                # Never beyond the rule, counting the retry just granted ...
                assert spent + 1 <= allowance + EPSILON
            else:
                # ... and never refused while the rule allows one.
                assert spent + 1 > allowance - EPSILON
        else:
            allowance, spent = rule_now()
            assert budget.available() == pytest.approx(max(0.0, allowance - spent), abs=EPSILON)

    # Over any `buckets` consecutive seconds (not only the window at a grant), the
    # retries granted are bounded by the calls of those seconds and of the window
    # before them, plus one reserve.
    for last in {*retries}:
        for end in range(last, last + buckets):
            start = end - buckets + 1
            spent = sum(1 for s in retries if start <= s <= end)
            calls = sum(1 for s in requests if start - buckets + 1 <= s <= end)
            assert spent <= ratio * calls + reserve + EPSILON


def test_available_and_try_spend_agree_after_every_step() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.3, 0.5, window=4.0, clock=clock)
    for step in range(400):
        if step % 3 == 0:
            budget.record_request()
        before = budget.available()
        if budget.try_spend():
            assert before >= 1.0
            assert budget.available() == pytest.approx(before - 1.0)
        else:
            assert before < 1.0
            assert budget.available() == before  # a refusal is not counted
        clock.now += 0.05 * (step % 7)


def _spend_all(budget: RetryBudget) -> int:
    spent = 0
    while budget.try_spend():
        spent += 1
    return spent
