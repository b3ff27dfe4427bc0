"""Circuit breaker: stop calling a dependency that keeps failing, then probe for recovery.

One breaker per host of a dependency (_hosts.py), used around each attempt::

    permit = breaker.admit()          # CircuitOpenError here: nothing was sent
    ... send the attempt ...
    breaker.record_success(permit)    # or record_failure / record_ignored

The caller decides what an outcome is (a 5xx, a transport error, a cancellation);
this module only counts what it is told, and times successes itself for the
slow-call rule. Recording is synchronous and idempotent, so it is safe in
``finally`` blocks and never yields to the event loop.

States::

    closed     every call is admitted. Opens when, within the last ``window``
               seconds, at least ``minimum_calls`` outcomes were recorded and the
               share of failures is >= ``failure_ratio``, or (with
               ``slow_call_duration`` set) the share of slow calls is >=
               ``slow_call_ratio``; or after ``consecutive_failures`` failures in
               a row (None: rule off)
    open       every call fails fast with CircuitOpenError for one open period
    half_open  after it: at most ``half_open_probes`` trial calls at once, the
               rest fail fast. Closes (with an empty window) once
               ``half_open_probes`` trials have succeeded, none of them slow;
               reopens for a new open period as soon as one fails or is slow

Open periods. The dependency counts as failing from the moment the breaker first
opens until it next closes (a closing success ends it; a trial success that does
not close it does not). Each time it opens or reopens, the period is::

    min(max(open_for_growth * failing_for, open_for), open_for_max)

times a uniform factor in 1 +- ``open_for_jitter``, then put back within
[``open_for``, ``open_for_max``]. So the first period is ``open_for``, a
dependency that keeps failing is probed less and less often, and however long it
was down, the breaker notices its return within ``open_for_growth`` (plus the
jitter) of the outage so far, or ``open_for``, whichever is longer. Time without
calls in half-open counts as failing: nothing said otherwise. The probes over an
outage of D seconds number about ``1 / growth`` (while the period is still
``open_for``) plus ``log(D * growth / open_for) / log(1 + growth)``. Why the
defaults (simulated at 100 calls/s, one attempt per call, 60 phases per outage;
``tests/test_breaker.py`` keeps the 3 s and 6 s cases):

- ``open_for = 0.5``: a short outage is over for callers half a second after the
  host's return, at the cost of two probes a second while it is down. The old
  fixed 5 s kept callers failing for 2-4 s after a 3 s outage.
- ``open_for_growth = 0.15``: after a 6 s outage, calls succeeded again within
  0.93 s of the host's return at worst (0.2: 1.33 s, 0.25: 1.63 s, over the 1.5 s
  target), with 0.034 upstream requests per call during it; 27 probes over a
  minute's outage, 39 over five.
- ``open_for_max = 30``: a long outage is still probed every 27-30 s (Envoy's
  base ejection time, Finagle's window), so a host back after an hour waits 30 s
  at most.
- ``open_for_jitter = 0.1``: replicas that opened together (a shared outage)
  drift apart by a tenth of each period instead of probing in step. Each breaker
  draws from its own ``random.Random``, so no one's ``random.seed()`` puts
  replicas back in step; tests pass ``random=``.

Slow calls (Resilience4j's ``slowCallDurationThreshold`` / ``slowCallRateThreshold``),
off unless ``slow_call_duration`` is set: a success that took longer than it,
from admission to ``record_success`` on the breaker's clock, is slow. Failures
are never slow calls (they count as failures). A slow trial call is a failed one.
With the rule off, a closed admission reads no clock; with it on, each permit
carries its admission time. ``slow_call_ratio = 0.8`` rather than Resilience4j's
1.0: one fast answer (a cached 404) among slow ones must not keep the breaker
closed, and with four in five answers over the threshold the caller set, the
dependency is slow.

pybreaker keeps the state of record, its storage and its listeners: every
transition goes through its public ``open()``, ``half_open()`` and ``close()``, so
``state_change`` fires on each one, and its ``fail_counter`` / ``success_counter``
hold our consecutive failures and successful trial calls; its ``reset_timeout``
follows the current open period. Nothing else of pybreaker is used: its
``call()`` counts an un-awaited coroutine as a success, ``calling()`` counts
cancellations as failures, ``call_async`` needs Tornado, and its half-open state
has no probe cap and times ``reset_timeout`` on the wall clock. Admission and
timing are therefore ours, on an injectable monotonic clock.

Open to half-open is lazy, as in pybreaker: the transition (and its log record and
listener call) happens at the first admission after the open period. Reading
:attr:`CircuitBreaker.state` or :meth:`CircuitBreaker.health` computes the
effective state, so an idle dependency reports ``half_open`` once the period has
passed instead of ``open`` forever, without a read changing anything.

Permits admitted before a transition are stale after it: their outcomes are
dropped (a call admitted while closed that fails after the breaker opened, or
succeeds after it closed again, says nothing about the current period), and they
never touch the probe count of a later half-open period.

Not thread-safe: a breaker belongs to one event loop, like the rest of a client.
"""

from __future__ import annotations

import math
import random as _random_module
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

# The jitter's source: the breaker's own, so no one's ``random.seed()`` puts replicas
# back in step. Tests pass their own ``random``.
_RANDOM = _random_module.Random()

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

    __slots__ = ("_admitted", "_period", "_recorded", "probe")

    def __init__(self, period: int, probe: bool, admitted: float = 0.0) -> None:
        self._period = period  # the breaker period (see CircuitBreaker._period) it belongs to
        self._recorded = False
        self.probe = probe
        # On the breaker's clock; read only by the slow-call rule (0.0 when it is off).
        self._admitted = admitted

    def __repr__(self) -> str:
        kind = "probe" if self.probe else "call"
        recorded = ", recorded" if self._recorded else ""
        return f"<Permit {kind} of period {self._period}{recorded}>"


class _Slice:
    __slots__ = ("calls", "failures", "index", "slow")

    def __init__(self, index: int) -> None:
        self.index = index
        self.calls = 0
        self.failures = 0
        self.slow = 0


class _Window:
    """Outcomes of the last ``span`` seconds, counted per time slice."""

    __slots__ = ("_slices", "_width", "calls", "failures", "slow")

    def __init__(self, span: float) -> None:
        self._width = span / _WINDOW_SLICES
        self._slices: deque[_Slice] = deque()
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def add(self, now: float, failed: bool, slow: bool = False) -> None:
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
        elif slow:
            newest.slow += 1
            self.slow += 1

    def prune(self, now: float) -> int:
        """Drop the slices that left the window; return the slice index of ``now``."""
        index = int(now // self._width)
        slices = self._slices
        oldest_kept = index - _WINDOW_SLICES + 1
        while slices and slices[0].index < oldest_kept:
            gone = slices.popleft()
            self.calls -= gone.calls
            self.failures -= gone.failures
            self.slow -= gone.slow
        return index

    def clear(self) -> None:
        self._slices.clear()
        self.calls = 0
        self.failures = 0
        self.slow = 0


class _LogTransitions(pybreaker.CircuitBreakerListener):
    """Logs every state change once, at WARNING, with the reason the breaker gave."""

    # Said when the pybreaker breaker is driven from outside this module.
    UNEXPLAINED = "changed outside resilient_client"

    def __init__(self, dependency: str, host: str | None = None) -> None:
        self.dependency = dependency
        self.host = host
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
            "dependency %r%s: circuit breaker %s -> %s (%s)",
            self.dependency,
            "" if self.host is None else f", host {self.host!r}",
            old,
            new,
            self.reason,
            extra={
                "event": "breaker_state",
                "dependency": self.dependency,
                "host": self.host,
                "breaker_state": new,
                # the call whose outcome moved it, when there is one
                **context_fields(),
            },
        )


class CircuitBreaker:
    """The circuit breaker of one dependency, or of one ``host`` of a dependency.

    See the module docstring for the rules.
    """

    def __init__(
        self,
        dependency: str,
        policy: BreakerPolicy,
        *,
        host: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _RANDOM.random,
    ) -> None:
        self._dependency = dependency
        # Errors name the host when the breaker is one host's (see _hosts.py).
        self._scope = "" if host is None else f"host {host!r}: "
        self._policy = policy
        self._clock = clock
        self._random = random  # uniform in [0, 1): the jitter of each open period
        self._storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self._log = _LogTransitions(dependency, host)
        # Its thresholds mirror the policy so that anyone inspecting it sees the truth
        # (reset_timeout follows the current open period); it never applies them
        # itself, because it is never asked to make a call.
        self._machine = pybreaker.CircuitBreaker(
            fail_max=policy.consecutive_failures or sys.maxsize,
            reset_timeout=policy.open_for,
            success_threshold=policy.half_open_probes,
            state_storage=self._storage,
            listeners=[self._log],
            name=dependency,
        )
        self._window = _Window(policy.window)
        self._slow_after = policy.slow_call_duration  # None: the slow-call rule is off
        # Every transition starts a new period; a permit counts only in its own.
        self._period = 0
        self._open_until = 0.0  # on self._clock; meaningful while open
        self._open_for = 0.0  # the length of the current (or last) open period; 0 when closed
        self._failing_since: float | None = None  # when it first opened; None when closed
        self._open_reason = ""
        self._probes_in_flight = 0

    @property
    def state_machine(self) -> pybreaker.CircuitBreaker:
        """The pybreaker breaker that keeps the state: add listeners to it, don't drive it."""
        return self._machine

    @property
    def state(self) -> BreakerState:
        """The effective state: ``half_open`` as soon as the open period has passed."""
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
            if self._slow_after is None:
                return Permit(self._period, probe=False)
            return Permit(self._period, False, self._clock())
        now = self._clock()
        if stored == pybreaker.STATE_OPEN:
            if now < self._open_until:
                # The fast-fail path: nothing is built but the error.
                raise CircuitOpenError(
                    self._dependency,
                    f"{self._scope}circuit open for another "
                    f"{_tenths_up(self._open_until - now)} s "
                    f"({self._open_reason})",
                )
            self._transition(
                pybreaker.STATE_HALF_OPEN,
                f"open for {self._open_for:.3g} s; up to "
                f"{self._policy.half_open_probes} trial call(s) at once",
            )
        probes = self._policy.half_open_probes
        if self._probes_in_flight >= probes:
            raise CircuitOpenError(
                self._dependency,
                f"{self._scope}circuit half_open with {self._probes_in_flight} trial call(s) "
                "in flight "
                f"(half_open_probes={probes}); retry once they complete",
            )
        self._probes_in_flight += 1
        return Permit(self._period, True, now)

    def record_success(self, permit: Permit) -> None:
        """The admitted call succeeded (slowly, if the slow-call rule says so)."""
        if not self._take(permit):
            return
        slow_after = self._slow_after
        if permit.probe:
            self._probes_in_flight -= 1
            if slow_after is not None:
                took = self._clock() - permit._admitted
                if took > slow_after:
                    self._open(
                        f"reopened: a trial call was slow ({took:.3g} s > "
                        f"slow_call_duration={slow_after:g} s)"
                    )
                    return
            self._storage.increment_success_counter()
            if self._storage.success_counter >= self._policy.half_open_probes:
                self._transition(
                    pybreaker.STATE_CLOSED,
                    f"{self._storage.success_counter} trial call(s) succeeded",
                )
            return
        self._storage.reset_counter()
        window = self._window
        now = self._clock()
        if slow_after is None:
            window.add(now, failed=False)
            # A success can complete minimum_calls with the ratio still over the threshold.
            self._check_ratio()
            return
        slow = now - permit._admitted > slow_after
        window.add(now, failed=False, slow=slow)
        if window.failures and self._check_ratio():
            return
        if window.slow:
            self._check_slow()

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
        elif not self._check_ratio() and self._slow_after is not None and self._window.slow:
            # A failure can complete minimum_calls with slow calls over their share.
            self._check_slow()

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
        since = self._failing_since
        failure_ratio = self.failure_ratio()  # prunes the window first
        window = self._window
        return {
            "state": self.state,
            "failure_ratio": failure_ratio,
            # None while the window is empty or the slow-call rule is off
            "slow_call_ratio": (
                window.slow / window.calls if window.calls and self._slow_after else None
            ),
            "calls_in_window": window.calls,
            "consecutive_failures": self._storage.counter,
            "open_for_remaining": round(max(open_left, 0.0), 3),
            # the current (or last) open period and how long the dependency has been
            # failing: both 0 while closed
            "open_period": round(self._open_for, 3),
            "failing_for": 0.0 if since is None else round(max(now - since, 0.0), 3),
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

    def _share_reached(self, count: int, share: float) -> bool:
        """Whether ``count`` of the window's outcomes is ``share`` of at least minimum_calls."""
        calls = self._window.calls
        return calls >= self._policy.minimum_calls and count / calls >= share

    def _check_ratio(self) -> bool:
        """Open if the failure ratio calls for it; whether it did."""
        window = self._window
        policy = self._policy
        if self._share_reached(window.failures, policy.failure_ratio):
            self._open(
                f"opened after {window.failures} failures in {window.calls} calls "
                f"within {policy.window:g} s"
            )
            return True
        return False

    def _check_slow(self) -> None:
        window = self._window
        policy = self._policy
        if self._share_reached(window.slow, policy.slow_call_ratio):
            self._open(
                f"opened after {window.slow} slow calls (over "
                f"slow_call_duration={policy.slow_call_duration:g} s) in {window.calls} "
                f"calls within {policy.window:g} s"
            )

    def _open(self, reason: str) -> None:
        now = self._clock()
        since = self._failing_since
        if since is None:
            since = self._failing_since = now
        period = self._open_period(now - since)
        self._open_for = period
        self._open_until = now + period
        self._open_reason = reason
        self._machine.reset_timeout = period
        self._transition(
            pybreaker.STATE_OPEN,
            f"{reason}; failing for {now - since:.3g} s, open for {period:.3g} s",
        )

    def _open_period(self, failing_for: float) -> float:
        """How long to stay open, the dependency having failed for ``failing_for`` s."""
        policy = self._policy
        shortest, longest = policy.open_for, policy.open_for_max
        period = min(max(policy.open_for_growth * failing_for, shortest), longest)
        jitter = policy.open_for_jitter
        if jitter:
            # Around the period, then back within the bounds: at open_for it can only
            # lengthen, at open_for_max only shorten.
            period *= 1.0 + jitter * (2.0 * self._random() - 1.0)
            period = min(max(period, shortest), longest)
        return period

    def _transition(self, new: str, reason: str) -> None:
        self._period += 1
        self._probes_in_flight = 0
        # Trial successes count per half-open period. pybreaker resets them on every
        # transition too, but the rule is ours, so we don't lean on that.
        self._storage.reset_success_counter()
        if new == pybreaker.STATE_CLOSED:
            self._window.clear()  # a closed breaker judges the dependency afresh
            self._storage.reset_counter()
            self._failing_since = None  # and its next outage starts at open_for again
            self._open_for = 0.0
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
