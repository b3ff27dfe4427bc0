"""The bench's scenarios: each a set of fault-profiled hosts and the traffic sent to them.

A :class:`Scenario` builds its hosts' profiles for the run's duration (outages
and degradations scale with it) and names the host whose figures answer its
question (``focus``). :class:`BenchOptions` says how scenarios are run (open or
closed loop, duration, rate, seed, limits); ``TOUR`` is what runs with no options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from ..testing._profiles import Degradation, Latency, Outage, Profile, Throttle

__all__ = [
    "SCENARIOS",
    "SWEEP_LEVELS",
    "TOUR",
    "BenchOptions",
    "LoadMode",
    "Scenario",
    "Stream",
    "outage_window",
    "outages_of",
    "sweep_scenarios",
]

LoadMode = Literal["open", "closed"]


@dataclass(frozen=True, slots=True)
class Stream:
    """Traffic to one host: ``rate`` calls a second (open loop) or ``workers`` (closed loop)."""

    host: str
    rate: float
    workers: int
    think_time: float = 0.0


HostsFor = Callable[[float], dict[str, Profile]]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A set of hosts (profiles built for the run's duration) and the traffic sent to them.

    ``focus`` is the host whose figures answer the scenario's question (the
    healthy host beside a slow one, say).
    """

    name: str
    title: str
    duration: float
    hosts: HostsFor
    streams: tuple[Stream, ...]
    focus: str
    # healthy alternates the clients in this many segments each; the others run once.
    segments: int = 1
    # A level of the concurrency sweep: this many callers in a closed loop, whatever the options.
    concurrency: int | None = None


def _healthy_hosts(duration: float) -> dict[str, Profile]:
    return {"api": Profile(name="api", latency=Latency(median=0.002, sigma=0.3))}


def _slow_hosts(duration: float) -> dict[str, Profile]:
    return {
        "slow": Profile(name="slow", latency=Latency(median=2.0)),
        "healthy": Profile(name="healthy", latency=Latency(median=0.005, sigma=0.3)),
    }


def outages_of(profile: Profile) -> list[tuple[float, float]]:
    return [(outage.start, outage.end) for outage in profile.outages]


def outage_window(duration: float) -> tuple[float, float]:
    """When the outage scenario's host is down: from a quarter to just past half the run."""
    return round(duration * 0.25, 3), round(duration * 0.55, 3)


def _outage_hosts(duration: float) -> dict[str, Profile]:
    start, end = outage_window(duration)
    return {
        "dep": Profile(
            name="dep",
            latency=Latency(median=0.005, sigma=0.3),
            outages=(Outage(start=start, end=end, kind="status", status=503),),
        )
    }


def _flapping_hosts(duration: float) -> dict[str, Profile]:
    return {
        "flaky": Profile(
            name="flaky",
            latency=Latency(median=0.02, sigma=0.4, tail_ratio=0.02, tail=1.0),
            error_ratio=0.25,
            reset_ratio=0.05,
        )
    }


def _throttled_hosts(duration: float) -> dict[str, Profile]:
    return {
        "limited": Profile(
            name="limited",
            latency=Latency(median=0.005, sigma=0.3),
            throttle=Throttle(rate=50, retry_after=1, burst=10),
        )
    }


def _degrading_hosts(duration: float) -> dict[str, Profile]:
    return {
        "sagging": Profile(
            name="sagging",
            latency=Latency(median=0.01, sigma=0.4),
            degradation=Degradation(
                start=round(duration * 0.2, 3),
                end=round(duration * 0.8, 3),
                latency_factor=30.0,
                error_ratio=0.5,
            ),
        )
    }


def _payments_hosts(duration: float) -> dict[str, Profile]:
    # A p99 near 300 ms (lognormal: 80 ms median, sigma 0.55), a rare 1.5 s request,
    # and two outages: first it stops answering (hangs), later it answers 503.
    first, second = round(duration * 0.2, 3), round(duration * 0.6, 3)
    return {
        "payments": Profile(
            name="payments",
            latency=Latency(median=0.08, sigma=0.55, tail_ratio=0.002, tail=1.5),
            error_ratio=0.005,
            hang_for=30.0,
            outages=(
                Outage(start=first, end=round(first + duration * 0.1, 3), kind="hang"),
                Outage(start=second, end=round(second + duration * 0.1, 3), kind="status"),
            ),
        )
    }


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "healthy",
            "a healthy host (2 ms): throughput, latency and client CPU per call",
            10.0,
            _healthy_hosts,
            (Stream("api", rate=200, workers=10),),
            focus="api",
            segments=10,
        ),
        Scenario(
            "slow-dependency",
            "a host answering after 2 s beside a healthy one, through one client",
            10.0,
            _slow_hosts,
            (
                Stream("slow", rate=100, workers=200),
                Stream("healthy", rate=50, workers=10, think_time=0.02),
            ),
            focus="healthy",
        ),
        Scenario(
            "outage",
            "a host answering 503 to everything from 25% to 55% of the run, then healthy",
            20.0,
            _outage_hosts,
            (Stream("dep", rate=100, workers=10, think_time=0.1),),
            focus="dep",
        ),
        Scenario(
            "flapping",
            "a host failing 30% of requests (25% 503, 5% reset), 2% of them taking 1 s",
            10.0,
            _flapping_hosts,
            (Stream("flaky", rate=100, workers=10, think_time=0.05),),
            focus="flaky",
        ),
        Scenario(
            "throttled",
            "a host admitting 50 requests/s, answering 429 with Retry-After: 1 beyond",
            10.0,
            _throttled_hosts,
            (Stream("limited", rate=100, workers=10, think_time=0.05),),
            focus="limited",
        ),
        Scenario(
            "degrading",
            "a host slowing from 10 ms to 300 ms and failing up to half its requests",
            15.0,
            _degrading_hosts,
            (Stream("sagging", rate=100, workers=10, think_time=0.05),),
            focus="sagging",
        ),
        Scenario(
            "payments",
            "a payments API: p99 about 300 ms, stops answering for 10% of the run, "
            "later answers 503 for 10%",
            30.0,
            _payments_hosts,
            (Stream("payments", rate=40, workers=10, think_time=0.1),),
            focus="payments",
        ),
    )
}

# The tour with no arguments: three scenarios, shorter, bare httpx against the defaults.
TOUR: tuple[tuple[str, float], ...] = (("healthy", 3.0), ("slow-dependency", 3.0), ("outage", 8.0))


# -- the concurrency sweep ----------------------------------------------------------------------

# Callers in flight at each level of ``--scenario sweep`` (``--concurrency`` changes them).
SWEEP_LEVELS: tuple[int, ...] = (1, 10, 50, 100, 200)
SWEEP_SECONDS = 4.0
SWEEP_SEGMENTS = 4
# At most this many callers at one level: below the load generator's cap on calls in flight.
SWEEP_MAX_LEVEL = 1000


def sweep_scenarios(levels: tuple[int, ...] = SWEEP_LEVELS) -> list[Scenario]:
    """One scenario per level: ``n`` callers in a closed loop on the healthy 2 ms host.

    Each level alternates the clients in short segments, as ``healthy`` does, so
    their throughput is compared side by side; like every scenario, a level is
    bounded by its duration, the grace and the call budget.
    """
    for level in levels:
        if not 1 <= level <= SWEEP_MAX_LEVEL:
            raise ValueError(f"a sweep level is 1 to {SWEEP_MAX_LEVEL} callers, got {level}")
    return [
        Scenario(
            f"sweep-{level}",
            f"{level} caller{'s' if level > 1 else ''} in a closed loop on a healthy 2 ms host",
            SWEEP_SECONDS,
            _healthy_hosts,
            (Stream("api", rate=100, workers=level),),
            focus="api",
            segments=SWEEP_SEGMENTS,
            concurrency=level,
        )
        for level in levels
    ]


# -- options --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """How scenarios are run. None for ``duration``/``rate``/``workers``: each scenario's own."""

    load: LoadMode = "open"
    duration: float | None = None
    rate: float | None = None
    workers: int | None = None
    seed: int = 1
    grace: float = 10.0
    max_calls: int = 200_000
    max_in_flight: int = 2_000
    sample_interval: float = 0.1

    def streams(self, scenario: Scenario) -> tuple[Stream, ...]:
        streams = scenario.streams
        if scenario.concurrency is not None:
            return streams  # a sweep level: its callers are the point
        if self.rate is not None:
            streams = tuple(replace(s, rate=self.rate) for s in streams)
        if self.workers is not None:
            streams = tuple(replace(s, workers=self.workers) for s in streams)
        return streams

    def for_scenario(self, scenario: Scenario) -> BenchOptions:
        """These options as ``scenario`` runs them: a sweep level always in a closed loop."""
        if scenario.concurrency is None:
            return self
        return replace(self, load="closed", rate=None, workers=None)

    def duration_of(self, scenario: Scenario) -> float:
        return scenario.duration if self.duration is None else self.duration
