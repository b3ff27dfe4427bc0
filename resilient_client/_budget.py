"""Retry budget: retries to one dependency may add only a bounded share of its traffic.

A retry policy alone multiplies load exactly when a dependency is failing: with
``attempts=3`` every call becomes three. A budget (Finagle's ``RetryBudget``,
Envoy's ``retry_budget``) caps retries by the dependency's recent traffic
instead, so a full outage costs it about ``(1 + ratio)`` times its normal load,
plus a small constant trickle, whatever ``attempts`` says.

The rule, exactly. Time is cut into whole seconds of the clock
(``floor(clock())``). The window at time ``t`` is the ``n = ceil(window)``
seconds ending with the current one, ``floor(t) - n + 1`` to ``floor(t)``: between
``n - 1`` and ``n`` seconds of history. With ``requests`` the calls recorded and
``spent`` the retries granted within that window::

    allowance = ratio * requests + min_per_second * window
    available = max(0, allowance - spent)      (within 1e-9 of a whole number: that number)
    try_spend() grants a retry  <=>  available >= 1

so right after every grant, ``spent <= allowance`` for the window it was granted
in. A refused retry is not counted. ``ratio = min_per_second = 0`` never grants one.

What to expect from it:

- During a full outage with steady traffic of ``r`` calls a second, retries
  settle at ``ratio * r + min_per_second * window / n`` a second
  (``ratio * r + min_per_second`` for a whole-second window).
- ``min_per_second * window`` is a reserve that does not wait for traffic: a
  quiet dependency can retry at once, and at most that many times in any window
  (``min_per_second`` a second on average).
- Capacity comes back as old seconds leave the window, retries and calls alike.
- Over any ``n`` consecutive seconds, not only a window a retry was granted in,
  the retries granted are at most ``ratio`` times the calls of those seconds and
  the ``n - 1`` before them, plus one reserve. (A retry may use the credit of calls
  that leave the window right after, so no tighter bound holds for every span.)

Each call is O(1) amortised: a ring of ``n`` per-second counters plus running
totals, so memory is bounded whatever the traffic. No locks: one event loop
owns a budget, and nothing here awaits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["RetryBudget"]

# Float products like 0.29 * 100 = 28.999999999999996 would otherwise withhold a
# retry the rule plainly allows: a value this close to a whole number is taken as
# that number (far below anything a budget of whole retries can mean).
_SNAP = 1e-9


class RetryBudget:
    """How many retries one dependency may still take; see the module docstring for the rule.

    ``record_request()`` once per logical call (its first attempt), ``try_spend()``
    once before each retry: a retry it refuses should not be sent.
    """

    __slots__ = (
        "_clock",
        "_min_per_second",
        "_ratio",
        "_requests",
        "_reserve",
        "_retries",
        "_second",
        "_total_requests",
        "_total_retries",
        "_window",
    )

    def __init__(
        self,
        ratio: float,
        min_per_second: float,
        *,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The settings validate these too; a budget built by hand must not
        # silently grant everything (NaN compares false) or nothing.
        if not (ratio >= 0 and math.isfinite(ratio)):
            raise ValueError(f"ratio must be a finite number >= 0, got {ratio!r}")
        if not (min_per_second >= 0 and math.isfinite(min_per_second)):
            raise ValueError(f"min_per_second must be a finite number >= 0, got {min_per_second!r}")
        if not (window > 0 and math.isfinite(window)):
            raise ValueError(f"window must be a finite number of seconds > 0, got {window!r}")
        self._ratio = ratio
        self._min_per_second = min_per_second
        self._window = window
        self._reserve = min_per_second * window
        self._clock = clock
        buckets = math.ceil(window)
        self._requests = [0] * buckets
        self._retries = [0] * buckets
        self._total_requests = 0
        self._total_retries = 0
        self._second = math.floor(clock())

    def record_request(self) -> None:
        """Count one logical call (its first attempt, never a retry)."""
        index = self._advance()
        self._requests[index] += 1
        self._total_requests += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget: True (and counted) if it allows one now, else False."""
        index = self._advance()
        if self._available() < 1.0:
            return False
        self._retries[index] += 1
        self._total_retries += 1
        return True

    def available(self) -> float:
        """Retries the budget would grant right now (fractional: the ratio accrues per call)."""
        self._advance()
        return self._available()

    def _available(self) -> float:
        left = self._ratio * self._total_requests + self._reserve - self._total_retries
        whole = round(left)
        if abs(left - whole) < _SNAP:
            left = float(whole)
        return max(0.0, left)

    def _advance(self) -> int:
        """Drop the seconds that left the window; return the current second's bucket."""
        second = math.floor(self._clock())
        buckets = len(self._requests)
        behind = second - self._second
        if behind > 0:
            if behind >= buckets:
                # Idle for a whole window or more: everything has expired.
                for index in range(buckets):
                    self._requests[index] = 0
                    self._retries[index] = 0
                self._total_requests = 0
                self._total_retries = 0
            else:
                # The bucket of second s is reused for s + n, so clear each one
                # that the window has just moved past.
                for passed in range(self._second + 1, second + 1):
                    index = passed % buckets
                    self._total_requests -= self._requests[index]
                    self._total_retries -= self._retries[index]
                    self._requests[index] = 0
                    self._retries[index] = 0
            self._second = second
        # A clock that steps back (only a fake one can) keeps counting into the
        # newest second rather than rewriting history.
        return self._second % buckets
