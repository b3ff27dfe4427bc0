"""Circuit breaker: stop calling a dependency that keeps failing, then probe for recovery.

One breaker per dependency, used around each attempt::

    permit = breaker.admit()          # CircuitOpenError here: nothing was sent
    ... send the attempt ...
    breaker.record_success(permit)    # or record_failure / record_ignored

The caller decides what an outcome is (a 5xx, a transport error, a cancellation);
this module only counts what it is told. Recording is synchronous and idempotent,
so it is safe in ``finally`` blocks and never yields to the event loop.

States::

    closed     every call is admitted. Opens when, within the last ``window``
               seconds, at least ``minimum_calls`` outcomes were recorded and the
               share of failures is >= ``failure_ratio``; or after
               ``consecutive_failures`` failures in a row (None: rule off)
    open       every call fails fast with CircuitOpenError for ``open_for`` seconds
    half_open  after ``open_for``: at most ``half_open_probes`` trial calls at once,
               the rest fail fast. Closes (with an empty window) once
               ``half_open_probes`` trials have succeeded; reopens for a fresh
               ``open_for`` as soon as one fails

pybreaker keeps the state of record, its storage and its listeners: every
transition goes through its public ``open()``, ``half_open()`` and ``close()``, so
``state_change`` fires on each one, and its ``fail_counter`` / ``success_counter``
hold our consecutive failures and successful trial calls. Nothing else of
pybreaker is used: its ``call()`` counts an un-awaited coroutine as a success,
``calling()`` counts cancellations as failures, ``call_async`` needs Tornado, and
its half-open state has no probe cap and times ``open_for`` on the wall clock.
Admission and timing are therefore ours, on an injectable monotonic clock.

Open to half-open is lazy, as in pybreaker: the transition (and its log record and
listener call) happens at the first admission after ``open_for``. Reading
:attr:`CircuitBreaker.state` or :meth:`CircuitBreaker.health` computes the
effective state, so an idle dependency reports ``half_open`` once ``open_for`` has
passed instead of ``open`` forever, without a read changing anything.

Permits admitted before a transition are stale after it: their outcomes are
dropped (a call admitted while closed that fails after the breaker opened, or
succeeds after it closed again, says nothing about the current period), and they
never touch the probe count of a later half-open period.

Not thread-safe: a breaker belongs to one event loop, like the rest of a client.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

import pybreaker

from ._exceptions import CircuitOpenError
from ._logging import context_fields, logger
from ._settings import BreakerPolicy

__all__ = ["BreakerState", "CircuitBreaker", "Permit"]

BreakerState = Literal["closed", "open", "half_open"]


# The window is kept as this many time slices, so memory stays bounded however many
# calls a busy dependency makes. The price: an outcome leaves the window when its
# slice does, up to window/_WINDOW_SLICES seconds before it is ``window`` seconds old
# (never after).
_WINDOW_SLICES = 20

_OURS: dict[str, BreakerState] = {
    pybreaker.STATE_CLOSED: "closed",
    pybreaker.STATE_OPEN: "open",
    pybreaker.STATE_HALF_OPEN: "half_open",
}


class Permit:
    """One admitted call; hand it back to exactly one ``record_*`` method.

    Recording it again does nothing, so callers can record in ``finally`` blocks.
    ``probe`` says whether it is a half-open trial call.
    """

    __slots__ = ("_period", "_recorded", "probe")

    def __init__(self, period: int, probe: bool) -> None:
        self._period = period  # the breaker period (see CircuitBreaker._period) it belongs to
        self._recorded = False
        self.probe = probe

    def __repr__(self) -> str:
        kind = "probe" if self.probe else "call"
        recorded = ", recorded" if self._recorded else ""
        return f"<Permit {kind} of period {self._period}{recorded}>"


class _Slice:
    __slots__ = ("calls", "failures", "index")

    def __init__(self, index: int) -> None:
        self.index = index
        self.calls = 0
        self.failures = 0


class _Window:
    """Outcomes of the last ``span`` seconds, counted per time slice."""

    __slots__ = ("_slices", "_width", "calls", "failures")

    def __init__(self, span: float) -> None:
        self._width = span / _WINDOW_SLICES
        self._slices: deque[_Slice] = deque()
        self.calls = 0
        self.failures = 0

    def add(self, now: float, failed: bool) -> None:
        index = int(now // self._width)
        slices = self._slices
        # Only a new slice can push old ones out of the window, so within the
        # newest slice there is nothing to prune. (A clock never runs backwards,
        # but if one did, the newest slice takes it.)
        if not slices or slices[-1].index < index:
            self.prune(now)
            slices.append(_Slice(index))
        newest = slices[-1]
        newest.calls += 1
        self.calls += 1
        if failed:
            newest.failures += 1
            self.failures += 1

    def prune(self, now: float) -> int:
        """Drop the slices that left the window; return the slice index of ``now``."""
        index = int(now // self._width)
        slices = self._slices
        oldest_kept = index - _WINDOW_SLICES + 1
        while slices and slices[0].index < oldest_kept:
            gone = slices.popleft()
            self.calls -= gone.calls
            self.failures -= gone.failures
        return index

    def clear(self) -> None:
        self._slices.clear()
        self.calls = 0
        self.failures = 0


class _LogTransitions(pybreaker.CircuitBreakerListener):
    """Logs every state change once, at WARNING, with the reason the breaker gave."""

    # Said when the pybreaker breaker is driven from outside this module.
    UNEXPLAINED = "changed outside resilient_client"

    def __init__(self, dependency: str) -> None:
        self.dependency = dependency
        self.reason = self.UNEXPLAINED

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        # Only the state objects: pybreaker calls this before its storage has the new
        # state, and reading cb.state here would make it "resync" and notify again.
        old = "none" if old_state is None else _OURS.get(old_state.name, old_state.name)
        new = _OURS.get(new_state.name, new_state.name)
        logger.warning(
            "dependency %r: circuit breaker %s -> %s (%s)",
            self.dependency,
            old,
            new,
            self.reason,
            extra={
                "event": "breaker_state",
                "dependency": self.dependency,
                "breaker_state": new,
                # the call whose outcome moved it, when there is one
                **context_fields(),
            },
        )


class CircuitBreaker:
    """The circuit breaker of one dependency; see the module docstring for the rules."""

    def __init__(
        self,
        dependency: str,
        policy: BreakerPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dependency = dependency
        self._policy = policy
        self._clock = clock
        self._storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self._log = _LogTransitions(dependency)
        # Its thresholds mirror the policy so that anyone inspecting it sees the truth;
        # it never applies them itself, because it is never asked to make a call.
        self._machine = pybreaker.CircuitBreaker(
            fail_max=policy.consecutive_failures or sys.maxsize,
            reset_timeout=policy.open_for,
            success_threshold=policy.half_open_probes,
            state_storage=self._storage,
            listeners=[self._log],
            name=dependency,
        )
        self._window = _Window(policy.window)
        # Every transition starts a new period; a permit counts only in its own.
        self._period = 0
        self._open_until = 0.0  # on self._clock; meaningful while open
        self._open_reason = ""
        self._probes_in_flight = 0

    @property
    def state_machine(self) -> pybreaker.CircuitBreaker:
        """The pybreaker breaker that keeps the state: add listeners to it, don't drive it."""
        return self._machine

    @property
    def state(self) -> BreakerState:
        """The effective state: ``half_open`` as soon as ``open_for`` has passed."""
        stored = self._storage.state
        if stored == pybreaker.STATE_CLOSED:
            return "closed"
        if stored == pybreaker.STATE_OPEN:
            return "open" if self._clock() < self._open_until else "half_open"
        return "half_open"

    def admit(self) -> Permit:
        """Admit one call or raise :class:`CircuitOpenError`; never waits, sends nothing."""
        stored = self._storage.state
        if stored == pybreaker.STATE_CLOSED:
            return Permit(self._period, probe=False)
        if stored == pybreaker.STATE_OPEN:
            now = self._clock()
            if now < self._open_until:
                # The fast-fail path: nothing is built but the error.
                raise CircuitOpenError(
                    self._dependency,
                    f"circuit open for another {_tenths_up(self._open_until - now)} s "
                    f"({self._open_reason})",
                )
            self._transition(
                pybreaker.STATE_HALF_OPEN,
                f"open_for={self._policy.open_for:g} s elapsed; up to "
                f"{self._policy.half_open_probes} trial call(s) at once",
            )
        probes = self._policy.half_open_probes
        if self._probes_in_flight >= probes:
            raise CircuitOpenError(
                self._dependency,
                f"circuit half_open with {self._probes_in_flight} trial call(s) in flight "
                f"(half_open_probes={probes}); retry once they complete",
            )
        self._probes_in_flight += 1
        return Permit(self._period, probe=True)

    def record_success(self, permit: Permit) -> None:
        """The admitted call succeeded."""
        if not self._take(permit):
            return
        if permit.probe:
            self._probes_in_flight -= 1
            self._storage.increment_success_counter()
            if self._storage.success_counter >= self._policy.half_open_probes:
                self._transition(
                    pybreaker.STATE_CLOSED,
                    f"{self._storage.success_counter} trial call(s) succeeded",
                )
            return
        self._storage.reset_counter()
        window = self._window
        window.add(self._clock(), failed=False)
        # A success can complete minimum_calls with the ratio still over the
        # threshold (never with no failure at all).
        if window.failures:
            self._check_ratio()

    def record_failure(self, permit: Permit) -> None:
        """The admitted call failed (the caller decides what a failure is)."""
        if not self._take(permit):
            return
        if permit.probe:
            self._open("reopened: a trial call failed")
            return
        self._storage.increment_counter()
        self._window.add(self._clock(), failed=True)
        limit = self._policy.consecutive_failures
        run = self._storage.counter
        if limit is not None and run >= limit:
            self._open(f"opened after {run} consecutive failures")
        else:
            self._check_ratio()

    def record_ignored(self, permit: Permit) -> None:
        """The call says nothing about the dependency (cancelled, refused locally).

        Frees its trial slot if it was a probe; changes nothing else.
        """
        if self._take(permit) and permit.probe:
            self._probes_in_flight -= 1

    def failure_ratio(self) -> float | None:
        """Failures / outcomes over the current window; None when there are none."""
        window = self._window
        window.prune(self._clock())
        return window.failures / window.calls if window.calls else None

    def health(self) -> dict[str, object]:
        """A JSON-serialisable snapshot, for health checks."""
        now = self._clock()
        stored = self._storage.state
        open_left = self._open_until - now if stored == pybreaker.STATE_OPEN else 0.0
        return {
            "state": self.state,
            "failure_ratio": self.failure_ratio(),
            "calls_in_window": self._window.calls,
            "consecutive_failures": self._storage.counter,
            "open_for_remaining": round(max(open_left, 0.0), 3),
            "probes_in_flight": self._probes_in_flight,
        }

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self._dependency!r} {self.state}>"

    def _take(self, permit: Permit) -> bool:
        """Mark the permit recorded; whether its outcome still counts."""
        if permit._recorded:
            return False
        permit._recorded = True
        return permit._period == self._period

    def _check_ratio(self) -> None:
        window = self._window
        policy = self._policy
        if window.calls >= policy.minimum_calls and (
            window.failures / window.calls >= policy.failure_ratio
        ):
            self._open(
                f"opened after {window.failures} failures in {window.calls} calls "
                f"within {policy.window:g} s"
            )

    def _open(self, reason: str) -> None:
        self._open_until = self._clock() + self._policy.open_for
        self._open_reason = reason
        self._transition(pybreaker.STATE_OPEN, reason)

    def _transition(self, new: str, reason: str) -> None:
        self._period += 1
        self._probes_in_flight = 0
        # Trial successes count per half-open period. pybreaker resets them on every
        # transition too, but the rule is ours, so we don't lean on that.
        self._storage.reset_success_counter()
        if new == pybreaker.STATE_CLOSED:
            self._window.clear()  # a closed breaker judges the dependency afresh
            self._storage.reset_counter()
        self._log.reason = reason
        try:
            if new == pybreaker.STATE_OPEN:
                self._machine.open()
            elif new == pybreaker.STATE_HALF_OPEN:
                self._machine.half_open()
            else:
                self._machine.close()
        except Exception:
            # A listener raised. pybreaker notifies before it stores the new state, so
            # store it ourselves: a broken telemetry hook must not wedge the breaker
            # or fail the call that happened to cause the transition.
            logger.exception(
                "dependency %r: a circuit breaker listener failed on the change to %s",
                self._dependency,
                _OURS[new],
                extra={"dependency": self._dependency, "breaker_state": _OURS[new]},
            )
            self._storage.state = new
        finally:
            self._log.reason = _LogTransitions.UNEXPLAINED


def _tenths_up(seconds: float) -> str:
    # Rounded up, so the time given is never one at which the call would still fail;
    # the slack keeps float noise (5.0 - 1.8 = 3.2000000000000455) from adding a tenth.
    return f"{math.ceil(seconds * 10 - 1e-9) / 10:.1f}"
