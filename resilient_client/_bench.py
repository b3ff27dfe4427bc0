"""The ``bench`` command's engine: scenarios, the clients compared, load and measurement.

One scenario is run against one upstream process (:class:`UpstreamProcess`)
holding every host of the scenario once per client, so each client talks to
ports of its own and the server's counts tell the clients apart. The clients
run one after another, never at once (they would compete for the two cores),
each with a fresh client object, and each host's clock (its outages, its
random draws) is restarted just before a client starts::

    for each client:    restart its hosts' clocks
                        load for ``duration``     open loop: calls arrive at a fixed mean rate
                                                  closed loop: N workers call, pause, call again
                        drain                     wait for the calls in flight (at most ``grace``)
    then:               read the server's counts; compute each client's figures

``healthy`` measures overhead, so it instead alternates the clients in short
segments (A B C, C B A, ...) with every client open and warm throughout, and
takes the median of the per-segment ratios: the machine's speed drifts from one
second to the next, and only figures measured side by side survive that.

Every run is bounded three ways: by time (``duration``, then ``grace``, then
whatever is left is cancelled and counted as unfinished), by a count of calls
(``max_calls``) and by calls in flight (``max_in_flight``; beyond it the load
generator records a call as not sent rather than pile up tasks).

The bench uses the library only through its public API (``AsyncClient``,
``health()``, the exceptions) and the settings loader.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import httpx
import pybreaker
import tenacity
from httpx._config import DEFAULT_LIMITS

from ._client import AsyncClient
from ._profiles import Degradation, Latency, Outage, Profile, Throttle
from ._settings import ResilienceSettings
from ._upstream import UpstreamProcess

__all__ = [
    "CLIENTS",
    "NOT_SENT",
    "OK",
    "SCENARIOS",
    "TOUR",
    "BenchOptions",
    "CallLog",
    "ClientSpec",
    "ClientUnderTest",
    "Progress",
    "Scenario",
    "ScenarioResult",
    "Stream",
    "client_specs",
    "run_bench",
    "run_scenario",
]

OK = "ok"
# A call still running when its run's time limit came: neither a success nor an error of the client.
UNFINISHED = "unfinished at the time limit"
# A call the load generator did not start because ``max_in_flight`` calls were outstanding.
NOT_SENT = "not sent (load generator cap)"
LoadMode = Literal["open", "closed"]
_CLOSE_TIMEOUT = 10.0


# -- the clients compared -------------------------------------------------------------------------


class ClientUnderTest(Protocol):
    """What the bench needs of a client: a GET, its breakers' states, and closing."""

    async def get(self, url: str) -> httpx.Response: ...

    def sample(self) -> dict[str, dict[str, Any]]:
        """Per dependency (``host:port``): breaker ``state`` and whatever else it can tell."""
        ...

    def describe(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class _Bare:
    """``httpx.AsyncClient()`` as most code uses it: one shared pool, no breaker."""

    def __init__(self) -> None:
        # trust_env=False only keeps environment proxies away from the 127.0.0.1 traffic.
        self._client = httpx.AsyncClient(trust_env=False)

    async def get(self, url: str) -> httpx.Response:
        return await self._client.get(url)

    def sample(self) -> dict[str, dict[str, Any]]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {
            "pool": f"one pool of {DEFAULT_LIMITS.max_connections} connections for all hosts",
            "timeout": "httpx's default: 5 s per phase (connect, read, write, pool wait)",
        }

    async def aclose(self) -> None:
        await self._client.aclose()


class _Retryable(Exception):
    """A response the hand-written retry loop treats as a failure."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


_HAND_RETRY_STATUS = frozenset({429, 502, 503, 504})


class _HandWritten:
    """The composition services write by hand today, which the library replaces.

    httpx with tenacity (3 retries, full-jitter exponential backoff on 429/5xx
    and transport errors), a pybreaker breaker (5 consecutive failures, open
    for 5 s) and an ``asyncio.Semaphore(50)`` per host. pybreaker's own async
    support needs Tornado, so the breaker wraps the await with ``calling()``,
    which does count async failures. What it lacks is what the comparison shows:
    no retry budget, no deadline across attempts, one shared connection pool,
    no Retry-After.
    """

    def __init__(self) -> None:
        self._client = httpx.AsyncClient(trust_env=False)
        self._hosts: dict[str, tuple[asyncio.Semaphore, pybreaker.CircuitBreaker]] = {}

    def _guards(self, url: str) -> tuple[asyncio.Semaphore, pybreaker.CircuitBreaker]:
        host = httpx.URL(url).netloc.decode("ascii")
        guards = self._hosts.get(host)
        if guards is None:
            breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=5, name=host)
            guards = self._hosts[host] = (asyncio.Semaphore(50), breaker)
        return guards

    async def get(self, url: str) -> httpx.Response:
        semaphore, breaker = self._guards(url)
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(4),
            wait=tenacity.wait_random_exponential(multiplier=0.05, max=2),
            retry=tenacity.retry_if_exception_type((httpx.TransportError, _Retryable)),
            reraise=True,
        )
        async with semaphore:
            try:
                async for attempt in retrying:
                    with attempt, breaker.calling():
                        response = await self._client.get(url)
                        if response.status_code in _HAND_RETRY_STATUS:
                            raise _Retryable(response)
            except _Retryable as exc:
                return exc.response  # retries used up: the caller sees the last answer
        return response

    def sample(self) -> dict[str, dict[str, Any]]:
        return {
            host: {"state": breaker.current_state.replace("_", "-")}
            for host, (_, breaker) in self._hosts.items()
        }

    def describe(self) -> dict[str, Any]:
        return {
            "retry": "tenacity: 4 attempts, wait_random_exponential(0.05, max 2 s), "
            "on transport errors and 429/502/503/504",
            "breaker": "pybreaker: fail_max 5, reset_timeout 5 s",
            "bulkhead": "asyncio.Semaphore(50) per host",
            "pool": "one httpx pool of 100 connections for all hosts",
        }

    async def aclose(self) -> None:
        await self._client.aclose()


class _Resilient:
    """``resilient_client.AsyncClient`` with the given settings (None: defaults)."""

    def __init__(self, settings: ResilienceSettings | None) -> None:
        self._client = AsyncClient(trust_env=False, settings=settings)

    async def get(self, url: str) -> httpx.Response:
        return await self._client.get(url)

    def sample(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "state": health["breaker"]["state"],
                "in_flight": health["in_flight"],
                "queued": health["queued"],
                "paused_for": health["rate_limit"]["paused_for"],
            }
            for name, health in self._client.health().items()
        }

    def describe(self) -> dict[str, Any]:
        policy = self._client.resilience_settings.default
        return {"default_policy": policy.model_dump(mode="json")}

    async def aclose(self) -> None:
        await self._client.aclose()


def _resilient_with(settings: ResilienceSettings) -> Callable[[], ClientUnderTest]:
    return lambda: _Resilient(settings)


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One column of the comparison: a short key, a label, and how to build a fresh client."""

    key: str
    label: str
    build: Callable[[], ClientUnderTest]


CLIENTS = ("httpx", "hand-written", "defaults", "settings")
_LABELS = {
    "httpx": "bare httpx",
    "hand-written": "httpx+tenacity+pybreaker",
    "defaults": "resilient (defaults)",
    "settings": "resilient (your settings)",
}


def client_specs(
    keys: Sequence[str], settings: ResilienceSettings | None = None
) -> list[ClientSpec]:
    """The clients to compare, in the order given; ``settings`` is needed for ``settings``."""
    specs = []
    for key in keys:
        if key == "httpx":
            specs.append(ClientSpec(key, _LABELS[key], _Bare))
        elif key == "hand-written":
            specs.append(ClientSpec(key, _LABELS[key], _HandWritten))
        elif key == "defaults":
            specs.append(ClientSpec(key, _LABELS[key], lambda: _Resilient(None)))
        elif key == "settings":
            if settings is None:
                raise ValueError("the 'settings' client needs settings (--settings FILE)")
            specs.append(ClientSpec(key, _LABELS[key], _resilient_with(settings)))
        else:
            raise ValueError(f"unknown client {key!r}; choose from {', '.join(CLIENTS)}")
    return specs


# -- scenarios ------------------------------------------------------------------------------------


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
        if self.rate is not None:
            streams = tuple(replace(s, rate=self.rate) for s in streams)
        if self.workers is not None:
            streams = tuple(replace(s, workers=self.workers) for s in streams)
        return streams

    def duration_of(self, scenario: Scenario) -> float:
        return scenario.duration if self.duration is None else self.duration


# -- measuring ------------------------------------------------------------------------------------


class CallLog:
    """Every call to one host: when it started (s into the run), how long it took, how it ended."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.latencies: list[float] = []
        self.outcomes: list[str] = []

    def add(self, start: float, latency: float, outcome: str) -> None:
        self.starts.append(start)
        self.latencies.append(latency)
        self.outcomes.append(outcome)

    def __len__(self) -> int:
        return len(self.starts)


def _outcome_of(response: httpx.Response) -> str:
    return OK if response.is_success else f"HTTP {response.status_code}"


async def _timed_call(client: ClientUnderTest, url: str, log: CallLog, origin: float) -> None:
    start = time.perf_counter()
    try:
        outcome = _outcome_of(await client.get(url))
    except asyncio.CancelledError:
        log.add(start - origin, time.perf_counter() - start, UNFINISHED)
        raise
    except Exception as exc:
        # Which error each client produces is the point of the comparison, not a reason to stop.
        outcome = type(exc).__name__
    log.add(start - origin, time.perf_counter() - start, outcome)


class _Calls:
    """The calls of one run in flight, capped, so the load generator never piles up tasks."""

    def __init__(self, cap: int, budget: int) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self.cap = cap
        self.left = budget

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True

    def start(self, client: ClientUnderTest, url: str, log: CallLog, origin: float) -> None:
        if len(self.tasks) >= self.cap:
            log.add(time.perf_counter() - origin, 0.0, NOT_SENT)
            return
        task = asyncio.create_task(_timed_call(client, url, log, origin))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


async def _open_loop(
    client: ClientUnderTest,
    url: str,
    stream: Stream,
    log: CallLog,
    calls: _Calls,
    origin: float,
    stop_at: float,
    rng: random.Random,
) -> None:
    """Calls arrive as a Poisson process of mean ``stream.rate``, whatever the client does.

    Arrival times are fixed in advance from a seeded generator: a client that
    falls behind meets the same arrivals, in a burst, as a real service would.
    """
    due = time.perf_counter()
    while calls.take():
        due += rng.expovariate(stream.rate)
        if due >= stop_at:
            return
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        calls.start(client, url, log, origin)


async def _worker(
    client: ClientUnderTest,
    url: str,
    stream: Stream,
    log: CallLog,
    calls: _Calls,
    origin: float,
    stop_at: float,
) -> None:
    """One caller of a closed loop: call, pause ``think_time``, call again, until stop or budget."""
    while time.perf_counter() < stop_at and calls.take():
        await _timed_call(client, url, log, origin)
        if stream.think_time:
            await asyncio.sleep(stream.think_time)
        else:
            await asyncio.sleep(0)  # let the other workers and the sampler run


class Progress(Protocol):
    """Told as runs start and advance, e.g. to drive a progress bar."""

    def started(self, scenario: str, client: str, seconds: float) -> None: ...

    def advanced(self, seconds: float) -> None: ...

    def finished(self) -> None: ...


class _Quiet:
    def started(self, scenario: str, client: str, seconds: float) -> None:
        pass

    def advanced(self, seconds: float) -> None:
        pass

    def finished(self) -> None:
        pass


@dataclass
class ClientRun:
    """What one client did in one scenario (all its segments together)."""

    spec: ClientSpec
    logs: dict[str, CallLog]
    samples: list[tuple[float, dict[str, dict[str, Any]]]] = field(default_factory=list)
    wall: float = 0.0
    cut_short: bool = False
    description: dict[str, Any] = field(default_factory=dict)
    # One (calls, cpu seconds, wall seconds) per segment: healthy compares them pairwise.
    segments: list[tuple[int, float, float]] = field(default_factory=list)
    received: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The scenario's host name -> the URL this client called it at.
    urls: dict[str, str] = field(default_factory=dict)

    def dependency_names(self) -> dict[str, str]:
        """``host:port`` (as the clients name dependencies) -> the scenario's host name."""
        return {httpx.URL(url).netloc.decode("ascii"): name for name, url in self.urls.items()}


async def _segment(
    client: ClientUnderTest,
    run: ClientRun,
    urls: Mapping[str, str],
    streams: Sequence[Stream],
    options: BenchOptions,
    seconds: float,
    offset: float,
    progress: Progress,
) -> None:
    """Load ``client`` for ``seconds`` then drain; times are recorded from ``offset`` on."""
    origin = time.perf_counter() - offset
    stop_at = time.perf_counter() + seconds
    calls = _Calls(options.max_in_flight, options.max_calls)
    before = _sent_calls(run)
    cpu, wall = time.process_time(), time.perf_counter()
    seeds = random.Random(options.seed)

    async def sampler() -> None:
        # Bounded by count as well as by the run's own time limit.
        for _ in range(int((seconds + options.grace) / options.sample_interval) + 10):
            now = time.perf_counter()
            run.samples.append((now - origin, client.sample()))
            progress.advanced(min(now - (stop_at - seconds), seconds))
            await asyncio.sleep(options.sample_interval)

    sampling = asyncio.create_task(sampler())
    try:
        async with asyncio.timeout(seconds + options.grace):
            async with asyncio.TaskGroup() as group:
                for stream in streams:
                    url, log = urls[stream.host], run.logs[stream.host]
                    if options.load == "open":
                        rng = random.Random(seeds.random())
                        group.create_task(
                            _open_loop(client, url, stream, log, calls, origin, stop_at, rng)
                        )
                    else:
                        for _ in range(stream.workers):
                            group.create_task(
                                _worker(client, url, stream, log, calls, origin, stop_at)
                            )
            # The arrivals are over; wait for the calls still in flight.
            while calls.tasks:
                await asyncio.wait(set(calls.tasks))
    except TimeoutError:
        run.cut_short = True
        for task in list(calls.tasks):
            task.cancel()
        await asyncio.gather(*calls.tasks, return_exceptions=True)
    finally:
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
    done = _sent_calls(run) - before
    run.segments.append((done, time.process_time() - cpu, time.perf_counter() - wall))
    run.wall += time.perf_counter() - wall


def _sent_calls(run: ClientRun) -> int:
    return sum(len(log) - log.outcomes.count(NOT_SENT) for log in run.logs.values())


@dataclass
class ScenarioResult:
    """One scenario with every client: the raw runs, and what the server counted."""

    scenario: Scenario
    options: BenchOptions
    duration: float
    streams: tuple[Stream, ...]
    hosts: dict[str, Profile]
    runs: list[ClientRun]
    bucket: float


async def run_scenario(
    scenario: Scenario,
    specs: Sequence[ClientSpec],
    options: BenchOptions,
    progress: Progress | None = None,
) -> ScenarioResult:
    """Run ``scenario`` once per client against one upstream process, which is stopped after."""
    progress = progress or _Quiet()
    duration = options.duration_of(scenario)
    streams = options.streams(scenario)
    hosts = scenario.hosts(duration)
    names = list(hosts)
    profiles = [hosts[name] for _ in specs for name in names]
    bucket = 0.1
    runs = [ClientRun(spec, {name: CallLog() for name in names}) for spec in specs]
    async with UpstreamProcess(profiles=profiles, seed=options.seed, bucket=bucket) as upstream:

        def urls_of(index: int) -> dict[str, str]:
            return {name: upstream.url(index * len(names) + i) for i, name in enumerate(names)}

        def ports_of(index: int) -> list[int]:
            return [index * len(names) + i for i in range(len(names))]

        if scenario.segments <= 1:
            for index, run in enumerate(runs):
                progress.started(scenario.name, run.spec.label, duration)
                client = run.spec.build()
                try:
                    run.description = client.describe()
                    await upstream.restart_clock(*ports_of(index))
                    await _segment(
                        client, run, urls_of(index), streams, options, duration, 0.0, progress
                    )
                finally:
                    await _close(client)
                progress.finished()
        else:
            await _alternate(scenario, runs, urls_of, ports_of, upstream, options, progress)
        stats = await upstream.stats()
    for index, run in enumerate(runs):
        run.urls = urls_of(index)
        for name, port_index in zip(names, ports_of(index), strict=True):
            run.received[name] = stats["ports"][str(upstream.ports[port_index])]
    return ScenarioResult(scenario, options, duration, streams, hosts, runs, bucket)


async def _alternate(
    scenario: Scenario,
    runs: list[ClientRun],
    urls_of: Callable[[int], dict[str, str]],
    ports_of: Callable[[int], list[int]],
    upstream: UpstreamProcess,
    options: BenchOptions,
    progress: Progress,
) -> None:
    """Every client open and warm; short segments in alternating order (A B, B A, ...)."""
    duration = options.duration_of(scenario)
    streams = options.streams(scenario)
    segment = duration / scenario.segments
    clients = [run.spec.build() for run in runs]
    try:
        for index, (run, client) in enumerate(zip(runs, clients, strict=True)):
            run.description = client.describe()
            await upstream.restart_clock(*ports_of(index))
            # Warm-up: connections open, code paths taken, before anything is measured.
            warm = ClientRun(run.spec, {name: CallLog() for name in run.logs})
            await _segment(
                client, warm, urls_of(index), streams, options, min(0.3, segment), 0.0, _Quiet()
            )
        for number in range(scenario.segments):
            order = list(range(len(runs)))
            if number % 2:
                order.reverse()
            for index in order:
                run = runs[index]
                progress.started(
                    scenario.name, f"{run.spec.label} ({number + 1}/{scenario.segments})", segment
                )
                offset = number * segment
                await _segment(
                    clients[index], run, urls_of(index), streams, options, segment, offset, progress
                )
                progress.finished()
    finally:
        for client in clients:
            await _close(client)


async def _close(client: ClientUnderTest) -> None:
    # Closing only closes sockets; longer than this means something is stuck.
    async with asyncio.timeout(_CLOSE_TIMEOUT):
        await client.aclose()


async def run_bench(
    scenarios: Sequence[tuple[Scenario, BenchOptions]],
    specs: Sequence[ClientSpec],
    progress: Progress | None = None,
) -> list[ScenarioResult]:
    return [await run_scenario(s, specs, options, progress) for s, options in scenarios]


# -- figures --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted ``values`` (None when empty)."""
    if not values:
        return None
    rank = max(1, math.ceil(fraction * len(values)))
    return values[rank - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _sent(outcome: str) -> bool:
    return outcome != NOT_SENT


def host_figures(log: CallLog, received: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """Counts, errors by type, latency percentiles and amplification for one host."""
    latencies = sorted(
        latency
        for latency, outcome in zip(log.latencies, log.outcomes, strict=True)
        if _sent(outcome)
    )
    outcomes = Counter(log.outcomes)
    calls = sum(n for outcome, n in outcomes.items() if _sent(outcome))
    upstream = sum(received.get("outcomes", {}).values())
    return {
        "calls": calls,
        "ok": outcomes[OK],
        "errors": {name: n for name, n in outcomes.most_common() if name != OK},
        "success_ratio": round(outcomes[OK] / calls, 4) if calls else None,
        "calls_per_s": round(calls / seconds, 1) if seconds else None,
        "latency_ms": {
            name: _ms(percentile(latencies, fraction))
            for name, fraction in (
                ("p50", 0.5),
                ("p90", 0.9),
                ("p99", 0.99),
                ("p999", 0.999),
                ("max", 1.0),
            )
        },
        "upstream": {
            "requests": upstream,
            "answered": dict(received.get("outcomes", {})),
            "per_call": round(upstream / calls, 3) if calls else None,
        },
    }


def window_of(duration: float) -> float:
    """The width of one time window in the timelines: about 40 windows a run."""
    return min(1.0, max(0.1, round(duration / 40, 2)))


def host_timeline(
    log: CallLog, received: Mapping[str, Any], bucket: float, window: float, until: float
) -> list[dict[str, Any]]:
    """Per window (by the calls' start): calls, ok, p50/p99, errors by type, server requests."""
    count = max(1, math.ceil(until / window))
    latencies: list[list[float]] = [[] for _ in range(count)]
    outcomes: list[Counter[str]] = [Counter() for _ in range(count)]
    for start, latency, outcome in zip(log.starts, log.latencies, log.outcomes, strict=True):
        index = min(count - 1, max(0, int(start / window)))
        outcomes[index][outcome] += 1
        if _sent(outcome):
            latencies[index].append(latency)
    requests = [0] * count
    for key, slot in received.get("timeline", {}).items():
        # Like the calls, anything after the last window (the drain) counts in the last one.
        index = min(count - 1, int(int(key) * bucket / window + 1e-9))
        requests[index] += sum(slot.values())
    rows = []
    for index in range(count):
        ordered = sorted(latencies[index])
        rows.append(
            {
                "t": round(index * window, 3),
                "calls": sum(outcomes[index].values()),
                "ok": outcomes[index][OK],
                "p50_ms": _ms(percentile(ordered, 0.5)),
                "p99_ms": _ms(percentile(ordered, 0.99)),
                "errors": {k: n for k, n in outcomes[index].items() if k != OK},
                "upstream_requests": requests[index],
            }
        )
    return rows


def recovery_time(
    log: CallLog, outage_end: float, until: float, window: float = 0.25, good: float = 0.95
) -> float | None:
    """Seconds from the outage's end until calls succeed again; None if not before ``until``.

    Calls are grouped by start time in ``window``-second windows from the end of
    the outage on; the time is the end of the last window in which fewer than
    ``good`` of the calls succeeded (0 when every window after the end was good).
    """
    windows: dict[int, list[int]] = {}
    for start, outcome in zip(log.starts, log.outcomes, strict=True):
        if outage_end <= start < until and _sent(outcome):
            slot = windows.setdefault(int((start - outage_end) / window), [0, 0])
            slot[0] += 1
            slot[1] += outcome == OK
    if not windows:
        return None
    bad = [index for index, (calls, ok) in windows.items() if ok < good * calls]
    if not bad:
        return 0.0
    last = max(bad)
    if outage_end + (last + 1) * window >= until - window:
        return None  # still failing at the end of the run
    return round((last + 1) * window, 3)


def amplification_between(
    log: CallLog, received: Mapping[str, Any], bucket: float, start: float, end: float
) -> dict[str, Any]:
    """Requests the server received per call started, counting only ``[start, end)``.

    The server counts requests in buckets, so both are counted over the buckets
    that begin within ``[start, end)``: calls by the bucket their start falls in.
    (Counting calls over ``[start, end)`` itself measured two different spans
    wherever the window did not begin and end on bucket edges.)
    """
    first = math.ceil(start / bucket - 1e-9)
    last = math.ceil(end / bucket - 1e-9)  # the first bucket that begins at or after ``end``
    calls = sum(
        1
        for s, o in zip(log.starts, log.outcomes, strict=True)
        if first <= int(s / bucket + 1e-9) < last and _sent(o)
    )
    requests = sum(
        sum(slot.values())
        for key, slot in received.get("timeline", {}).items()
        if first <= int(key) < last
    )
    return {
        "calls": calls,
        "upstream_requests": requests,
        "per_call": round(requests / calls, 3) if calls else None,
    }


def breaker_timeline(run: ClientRun, names: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each host's breaker state (and queue, pause) as sampled, keyed by the scenario's names."""
    timeline = []
    for at, sample in run.samples:
        states = {names[dep]: values for dep, values in sample.items() if dep in names}
        timeline.append({"t": round(at, 3), "hosts": states})
    return timeline


def overhead(result: ScenarioResult, baseline: str = "httpx") -> dict[str, Any]:
    """CPU per call and throughput of each client against ``baseline``, segment by segment."""
    by_key = {run.spec.key: run for run in result.runs}
    base = by_key.get(baseline)
    figures: dict[str, Any] = {}
    for run in result.runs:
        calls = sum(s[0] for s in run.segments)
        cpu = sum(s[1] for s in run.segments)
        wall = sum(s[2] for s in run.segments)
        entry: dict[str, Any] = {
            "cpu_us_per_call": round(cpu / calls * 1e6, 1) if calls else None,
            "calls_per_s": round(calls / wall, 1) if wall else None,
        }
        if base is not None and run is not base:
            cpu_ratios = [
                (mine[1] / mine[0]) / (theirs[1] / theirs[0])
                for mine, theirs in zip(run.segments, base.segments, strict=False)
                if mine[0] and theirs[0] and theirs[1] > 0
            ]
            rate_ratios = [
                (mine[0] / mine[2]) / (theirs[0] / theirs[2])
                for mine, theirs in zip(run.segments, base.segments, strict=False)
                if mine[0] and theirs[0] and mine[2] > 0 and theirs[2] > 0
            ]
            if cpu_ratios:
                entry["cpu_ratio_vs_httpx"] = round(statistics.median(cpu_ratios), 3)
                entry["cpu_ratio_segments"] = [round(r, 3) for r in cpu_ratios]
            if rate_ratios:
                entry["throughput_ratio_vs_httpx"] = round(statistics.median(rate_ratios), 3)
        figures[run.spec.key] = entry
    return figures
