"""The bench's runner: each scenario once per client against one upstream process.

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
reports each client's median over its segments: the machine's speed drifts from
one second to the next, and only figures measured side by side survive that.
The server's counts restart once every client is warm (the warm-up is not part
of the run), and each segment sets the server's clock to its place in the run,
so one timeline spans a client's segments.

Every run is bounded three ways: by time (``duration``, then ``grace``, then
whatever is left is cancelled and counted as unfinished), by a count of calls
(``max_calls``, per client and scenario, all its segments together) and by
calls in flight (``max_in_flight``; beyond it the load generator records a call
as not sent rather than pile up tasks).

The clients are in :mod:`._clients`, the scenarios in :mod:`._scenarios`, the
load generator in :mod:`._load`; what a run yields is turned into figures by
:mod:`._figures`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from ..testing._profiles import Profile
from ..testing._upstream import UpstreamProcess
from ._clients import ClientSpec, ClientUnderTest, close_client
from ._load import CallLog, Calls, open_loop, worker
from ._scenarios import BenchOptions, Scenario, Stream

__all__ = [
    "ClientRun",
    "Progress",
    "ScenarioResult",
    "run_bench",
    "run_scenario",
]


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
    # The budget is the run's: what earlier segments of this client spent is spent.
    spent = sum(len(log) for log in run.logs.values())
    calls = Calls(options.max_in_flight, max(0, options.max_calls - spent))
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
                            open_loop(client, url, stream, log, calls, origin, stop_at, rng)
                        )
                    else:
                        for _ in range(stream.workers):
                            group.create_task(
                                worker(client, url, stream, log, calls, origin, stop_at)
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
    return sum(log.sent_calls for log in run.logs.values())


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
                    await close_client(client)
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
            # Warm-up: connections open, code paths taken, before anything is measured.
            warm = ClientRun(run.spec, {name: CallLog() for name in run.logs})
            await _segment(
                client, warm, urls_of(index), streams, options, min(0.3, segment), 0.0, _Quiet()
            )
        # The server counts from here: the warm-up's requests are not the run's.
        await upstream.restart_clock()
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
                # The server's timeline then runs in the run's time, gaps left out.
                await upstream.set_clock(*ports_of(index), at=offset)
                await _segment(
                    clients[index], run, urls_of(index), streams, options, segment, offset, progress
                )
                progress.finished()
    finally:
        for client in clients:
            await close_client(client)


async def run_bench(
    scenarios: Sequence[tuple[Scenario, BenchOptions]],
    specs: Sequence[ClientSpec],
    progress: Progress | None = None,
) -> list[ScenarioResult]:
    return [await run_scenario(s, specs, options, progress) for s, options in scenarios]
