"""What each hot-path shortcut saves, alone, as time per call and as a share of a request.

Issue 11: every hot-path shortcut either has its measured gain written down or
goes. This benchmark measures each shortcut side by side with the plain way it
replaces, and, in the same run, what one whole request through the client
costs, so a saving can be read as a share of a request rather than as a bare
number of nanoseconds.

Only the shortcuts kept after the run of 2026-12-08 are measured here; the
ones that run found below 0.5% of a request were removed from the code, and
their figures stay in benchmarks/results/2026-12-08-shortcuts.md.

Method.

- A request: a closed loop of ``--requests`` GETs (default 2,000) at
  concurrency 1 through ``resilient_client.AsyncClient`` (defaults, trust_env
  off) to the embedded upstream in its own process on 127.0.0.1; the client's
  CPU time (``time.process_time``) divided by the requests sent. The upstream's
  CPU is another process's and is not counted.
- A shortcut: its code and the plain way's, each called ``--iterations`` times
  in a loop timed with ``time.perf_counter_ns`` and, on the request's clock,
  ``time.process_time_ns`` (a loop also stops after ``MAX_SECONDS_PER_LOOP``;
  the time per call is over the calls made). Both run on the real objects of a
  warm client (its pipeline for the upstream's host, its timeout strategy,
  breaker, budget, cookie store), except where noted in the case's comment.
  Every case wraps both sides the same way (a call of one function, or one
  ``await``), so what the wrapper costs cancels in the difference; the
  per-call times shown have an empty loop's cost taken off.
- Interleaved: each round measures the request loop, then every case, plain and
  shortcut alternately first (and the cases in reverse order every other
  round), so the machine's mood changes both sides alike. The saving and the
  share of a request are worked out within each round (plain - shortcut, times
  the runs per request, over that round's request CPU); the table gives their
  median over the rounds and the quartiles as spread. No absolute time is ever
  a pass or fail: the verdict compares the median share with 0.5% of a request.
- Two clocks, because the machine is shared: while other processes compete for
  the cores, elapsed time includes theirs and CPU time does not. The share of a
  request divides CPU by CPU; the per-call columns are elapsed time, as
  perf_counter_ns gives it (on a quiet machine the two agree).
- A loop runs its code hot (caches, branch predictors); inside a whole request
  the same code runs colder, so a loop's share of a request can understate what
  the code costs there. ``--in-situ`` checks that for the one shortcut that is
  easy to switch off in a client: each round's GETs then go in short segments
  alternating with a client that has httpx's own cookie store, and case 10's
  saving inside whole requests is printed beside its loop's figure.

How to read the table. ``runs/req`` is how often the code runs in one small
GET (one attempt, a two-byte body read as one chunk and the end). ``plain`` and
``shortcut`` are microseconds per call (perf_counter_ns), the median of the
rounds with the best round in brackets. ``saved us/call`` is the median of the
rounds' differences, with quartiles. ``saved CPU us/req`` is the same
difference in CPU time, times runs/req. ``% of request`` is that over the
client's CPU per request, round by round: the share of a request the shortcut
saves, median and quartiles. A verdict of ``keep`` needs a median of at least
0.5%; a negative figure means the shortcut costs more than the plain way.

    python benchmarks/shortcuts.py [--rounds 11] [--iterations 20000] [--requests 2000]
                                   [--in-situ]
    python benchmarks/shortcuts.py --quick      # a smoke run: about 20 seconds
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import math
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

import httpx
from opentelemetry import metrics, trace

import resilient_client as rc
from resilient_client._deadline import monotonic
from resilient_client._retry import _RetryDecisions
from resilient_client._telemetry import _global_providers, _records

# Every timed loop stops after this long, whatever --iterations says.
MAX_SECONDS_PER_LOOP = 1.5
# A request loop that takes longer than this is an error (the upstream is stuck).
REQUEST_LOOP_TIMEOUT = 120.0
# With --in-situ, each round's GETs go in segments of this many, the clients alternating.
IN_SITU_SEGMENT = 200
# The bar: a shortcut that saves less than this share of a request goes.
KEEP_AT_PERCENT = 0.5

SyncFn = Callable[[], object]
AsyncFn = Callable[[], Awaitable[object]]
PLAIN, SHORTCUT = 0, 1


class _Upstream(Protocol):
    def url(self, index: int = 0, path: str = "/") -> str: ...
    async def __aenter__(self) -> _Upstream: ...
    async def __aexit__(self, *exc_info: object) -> None: ...


def _upstream_process() -> _Upstream:
    """The embedded upstream, wherever the refactor has put it by now."""
    for module in ("resilient_client.testing._upstream", "resilient_client._upstream"):
        try:
            found = importlib.import_module(module)
        except ImportError:
            continue
        return cast(_Upstream, found.UpstreamProcess(ports=1))
    raise RuntimeError("no UpstreamProcess in resilient_client.testing._upstream or ._upstream")


# -- timing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerCall:
    """Nanoseconds per call: elapsed (perf_counter_ns) and this process's CPU (process_time_ns)."""

    wall: float
    cpu: float


def _time_sync(fn: SyncFn, iterations: int) -> PerCall:
    """Time per call of ``fn``, over at most ``iterations`` calls."""
    gc.collect()
    chunk = min(iterations, 500)
    stop_at = time.perf_counter_ns() + int(MAX_SECONDS_PER_LOOP * 1e9)
    done = 0
    cpu_start, start = time.process_time_ns(), time.perf_counter_ns()
    while done < iterations:
        for _ in range(min(chunk, iterations - done)):
            fn()
        done += min(chunk, iterations - done)
        if time.perf_counter_ns() >= stop_at:
            break
    wall, cpu = time.perf_counter_ns() - start, time.process_time_ns() - cpu_start
    return PerCall(wall / done, cpu / done)


async def _time_async(fn: AsyncFn, iterations: int) -> PerCall:
    """Time per ``await fn()``, over at most ``iterations`` awaits."""
    gc.collect()
    chunk = min(iterations, 500)
    stop_at = time.perf_counter_ns() + int(MAX_SECONDS_PER_LOOP * 1e9)
    done = 0
    cpu_start, start = time.process_time_ns(), time.perf_counter_ns()
    while done < iterations:
        for _ in range(min(chunk, iterations - done)):
            await fn()
        done += min(chunk, iterations - done)
        if time.perf_counter_ns() >= stop_at:
            break
    wall, cpu = time.perf_counter_ns() - start, time.process_time_ns() - cpu_start
    return PerCall(wall / done, cpu / done)


def _nothing() -> None:
    return None


async def _nothing_async() -> None:
    return None


@dataclass(frozen=True)
class Case:
    number: str
    title: str
    runs_per_request: int
    runs: str  # what one run is: "per call", "per attempt", "per body read"
    is_async: bool
    plain: SyncFn | AsyncFn
    shortcut: SyncFn | AsyncFn

    async def measure(self, side: int, iterations: int) -> PerCall:
        fn = self.shortcut if side == SHORTCUT else self.plain
        if self.is_async:
            return await _time_async(cast(AsyncFn, fn), iterations)
        return _time_sync(fn, iterations)


@dataclass
class Samples:
    """One case's time per call in each round, each side, the empty loop's cost included."""

    plain: list[PerCall] = field(default_factory=list)
    shortcut: list[PerCall] = field(default_factory=list)


# -- the cases ---------------------------------------------------------------------------


class _NoRetries:
    """The retry loop's observer: this benchmark's first attempts never retry."""

    def breaker_open(self) -> bool:
        return False

    def retrying(self, reason: str, wait: float) -> None:
        raise AssertionError("the benchmark's attempt succeeds: no retry")

    def retry_refused(self, reason: str, message: str) -> None:
        raise AssertionError("the benchmark's attempt succeeds: no retry")


class _TinyBody(httpx.AsyncByteStream):
    """An async byte stream of two-byte chunks (as httpx's own: an async generator)."""

    def __init__(self, chunks: int) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self._chunks):
            yield b"ok"


async def build_cases(probe: rc.AsyncClient, url: str, iterations: int) -> list[Case]:
    """The cases, on the objects of ``probe`` (a warm client not used for the request loop)."""
    response = await probe.get(url)  # warms the pipeline, its timeouts cache, the registry
    response.raise_for_status()
    request = response.request
    target = request.url
    pipeline = probe._registry.resolve(target)
    deadline = monotonic() + 3600.0
    cases: list[Case] = []

    # 5. The first attempt outside tenacity: awaited directly and its outcome checked
    # (_pipeline._send), vs one AsyncRetrying built and run as RetryStrategy.run does.
    strategy = pipeline._retry
    first = httpx.Response(200, request=request)
    observer = _NoRetries()

    async def attempt() -> httpx.Response:
        return first

    async def direct() -> httpx.Response:
        outcome = await attempt()
        if strategy.reason_to_retry(request, outcome) is None:
            return outcome
        raise AssertionError("a 200 is not retried")

    async def in_tenacity() -> httpx.Response:
        decisions = _RetryDecisions(strategy, request, deadline, observer)
        outcome: httpx.Response | None = None
        async for try_ in decisions.retrying():
            with try_:
                outcome = await attempt()
            try_.retry_state.set_result(outcome)
        assert outcome is not None
        return outcome

    cases.append(
        Case("5", "first attempt outside tenacity", 1, "per call", True, in_tenacity, direct)
    )

    # 6. HeaderSlot: the request-id header's set_default (per call) and the deadline
    # header's set (per attempt), vs httpx.Headers' `in` and item assignment. On a
    # fresh request's headers: six, their encoding not worked out yet (so the first
    # public operation decodes them all, as it would on a real request).
    telemetry = probe._telemetry
    id_slot = telemetry.request_id_header
    deadline_slot = pipeline._deadline_header
    assert id_slot is not None, "the request-id header is on by default"
    assert deadline_slot is not None, "the deadline header is on by default"
    headers = httpx.Headers(probe.build_request("GET", url).headers)
    headers["Authorization"] = "Bearer 0123456789abcdef"
    headers._encoding = None
    entries = headers._list
    fresh = len(entries)
    request_id = "5f2b7c0e9a1d4e3f8b6a2c4d0e1f3a5b"
    id_name, deadline_name = id_slot.name, deadline_slot.name

    def new_id() -> str:
        return request_id

    def slots() -> None:
        id_slot.set_default(headers, new_id)
        deadline_slot.set(headers, "4999")
        del entries[fresh:]
        headers._encoding = None

    def public() -> None:
        if id_name not in headers:
            headers[id_name] = new_id()
        headers[deadline_name] = "4999"
        del entries[fresh:]
        headers._encoding = None

    cases.append(Case("6", "HeaderSlot set_default + set", 1, "per call", False, public, slots))

    # 9. _GlobalProviders: the global providers looked up at most once a second (a clock
    # read per call), vs looked up and classified on every call. No SDK is set globally.
    providers = _global_providers

    def rechecked() -> tuple[bool, bool]:
        now = time.monotonic()
        if now >= providers.next_check:
            providers.refresh(now)
        return providers.tracing, providers.metering

    def looked_up() -> tuple[bool, bool]:
        return _records(trace.get_tracer_provider()), _records(metrics.get_meter_provider())

    cases.append(
        Case("9", "telemetry _GlobalProviders", 1, "per call", False, looked_up, rechecked)
    )

    # 10. ResponseCookies: a response without Set-Cookie never reaches the jar, vs
    # httpx.Cookies handing it over (a real response of the upstream, its request).
    store = probe.cookies
    plain_store = httpx.Cookies()

    def skip_jar() -> None:
        store.extract_cookies(response)

    def to_jar() -> None:
        plain_store.extract_cookies(response)

    cases.append(Case("10", "ResponseCookies", 1, "per response", False, to_jar, skip_jar))

    return cases


# -- the request -------------------------------------------------------------------------


async def request_cpu_us(client: httpx.AsyncClient, url: str, requests: int) -> tuple[float, float]:
    """Client CPU microseconds per GET, over ``requests`` GETs one after another,
    and the share of it spent in user mode (the rest is the kernel's, for the
    process: sockets, polling; os.times() counts in clock ticks, so only a share)."""
    times, start = os.times(), time.process_time()
    async with asyncio.timeout(REQUEST_LOOP_TIMEOUT):
        for _ in range(requests):
            response = await client.get(url)
            if response.status_code != 200:
                raise RuntimeError(f"upstream answered {response.status_code}")
    cpu, after = time.process_time() - start, os.times()
    user, system = after.user - times.user, after.system - times.system
    return cpu / requests * 1e6, user / (user + system) if user + system > 0 else math.nan


# -- the run -----------------------------------------------------------------------------


@dataclass
class Run:
    cases: list[Case]
    samples: dict[str, Samples]
    request_us: list[float]
    request_user_share: list[float]  # of the request's CPU, per round
    # With --in-situ: a request's CPU with httpx's own cookie store, per round.
    jar_request_us: list[float]
    empty: list[PerCall]  # an empty function's, per round
    empty_async: list[PerCall]  # an awaited empty coroutine's, per round


async def run(rounds: int, iterations: int, requests: int, in_situ: bool) -> Run:
    async with (
        _upstream_process() as upstream,
        rc.AsyncClient(trust_env=False) as client,
        rc.AsyncClient(trust_env=False) as probe,
        rc.AsyncClient(trust_env=False) as jar_client,
    ):
        # The in-situ check: the same client but for httpx's own cookie store (its
        # setter would wrap the jar in ResponseCookies again), so every response
        # goes to the jar.
        jar_client._cookies = httpx.Cookies(jar_client._cookies.jar)
        url = upstream.url(0)
        for warming in (client, jar_client) if in_situ else (client,):
            await request_cpu_us(warming, url, min(requests, 500))  # connection, caches
        cases = await build_cases(probe, url, iterations)
        result = Run(cases, {case.number: Samples() for case in cases}, [], [], [], [], [])
        for index in range(rounds):
            if in_situ:
                # Short segments, the two clients alternating, so both see the same load.
                ours: list[tuple[float, float]] = []
                jar: list[tuple[float, float]] = []
                segments = max(1, requests // IN_SITU_SEGMENT)
                for segment in range(segments):
                    for which in (0, 1) if (index + segment) % 2 == 0 else (1, 0):
                        size = requests // segments
                        measured = await request_cpu_us(jar_client if which else client, url, size)
                        (jar if which else ours).append(measured)
                cpu_us = statistics.fmean(cpu for cpu, _ in ours)
                user_share = statistics.fmean(share for _, share in ours)
                result.jar_request_us.append(statistics.fmean(cpu for cpu, _ in jar))
            else:
                cpu_us, user_share = await request_cpu_us(client, url, requests)
            result.request_us.append(cpu_us)
            result.request_user_share.append(user_share)
            result.empty.append(_time_sync(_nothing, iterations))
            result.empty_async.append(await _time_async(_nothing_async, iterations))
            ordered = cases if index % 2 == 0 else cases[::-1]
            for position, case in enumerate(ordered):
                sides = (PLAIN, SHORTCUT) if (index + position) % 2 == 0 else (SHORTCUT, PLAIN)
                for side in sides:
                    per_call = await case.measure(side, iterations)
                    samples = result.samples[case.number]
                    (samples.shortcut if side == SHORTCUT else samples.plain).append(per_call)
            print(
                f"  round {index + 1:2d}/{rounds}: a request costs "
                f"{result.request_us[-1]:7.1f} us of client CPU",
                file=sys.stderr,
                flush=True,
            )
        return result


def _median_and_quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q2, q1, q3


@dataclass(frozen=True)
class Row:
    case: Case
    # Microseconds per call by perf_counter_ns, the empty loop's cost taken off:
    # the median of the rounds, and the best round.
    plain_us: float
    plain_best_us: float
    shortcut_us: float
    shortcut_best_us: float
    saved_us: tuple[float, float, float]  # median, q1, q3 of the rounds' differences
    # The same difference on the request's clock (this process's CPU time), and
    # per round that times runs_per_request over the round's CPU per request, in %.
    saved_cpu_us: float
    percent: tuple[float, float, float]

    @property
    def saved_per_request_us(self) -> float:
        return self.saved_cpu_us * self.case.runs_per_request

    @property
    def keep(self) -> bool:
        return self.percent[0] >= KEEP_AT_PERCENT

    def verdict(self) -> str:
        if self.keep:
            return (
                f"keep: saves {self.saved_per_request_us:.1f} us = "
                f"{self.percent[0]:.2f}% of a request"
            )
        return f"drop: below noise (< {KEEP_AT_PERCENT}% of a request)"


def _us(samples: list[PerCall], empty: list[PerCall], clock: str) -> list[float]:
    return [
        (getattr(sample, clock) - getattr(nothing, clock)) / 1000
        for sample, nothing in zip(samples, empty, strict=True)
    ]


def _best_us(samples: list[PerCall], empty: list[PerCall]) -> float:
    """The best round's elapsed time per call, less the best empty loop's."""
    return (min(s.wall for s in samples) - min(e.wall for e in empty)) / 1000


def summarise(result: Run) -> list[Row]:
    rows = []
    for case in result.cases:
        samples = result.samples[case.number]
        empty = result.empty_async if case.is_async else result.empty
        plain, short = _us(samples.plain, empty, "wall"), _us(samples.shortcut, empty, "wall")
        saved = [p - s for p, s in zip(plain, short, strict=True)]
        saved_cpu = [
            p - s
            for p, s in zip(
                _us(samples.plain, empty, "cpu"), _us(samples.shortcut, empty, "cpu"), strict=True
            )
        ]
        percent = [
            100 * d * case.runs_per_request / request
            for d, request in zip(saved_cpu, result.request_us, strict=True)
        ]
        rows.append(
            Row(
                case,
                statistics.median(plain),
                _best_us(samples.plain, empty),
                statistics.median(short),
                _best_us(samples.shortcut, empty),
                _median_and_quartiles(saved),
                statistics.median(saved_cpu),
                _median_and_quartiles(percent),
            )
        )
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| # | shortcut | runs/req | plain us/call | shortcut us/call | saved us/call [q1, q3] "
        "| saved CPU us/req | % of request [q1, q3] |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        saved, q1, q3 = row.saved_us
        share, p1, p3 = row.percent
        lines.append(
            f"| {row.case.number} | {row.case.title} "
            f"| {row.case.runs_per_request} {row.case.runs} "
            f"| {row.plain_us:.3f} ({row.plain_best_us:.3f}) "
            f"| {row.shortcut_us:.3f} ({row.shortcut_best_us:.3f}) "
            f"| {saved:.3f} [{q1:.3f}, {q3:.3f}] "
            f"| {row.saved_per_request_us:.3f} "
            f"| {share:.3f}% [{p1:.3f}, {p3:.3f}] |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=11, help="interleaved rounds (11)")
    parser.add_argument(
        "--iterations", type=int, default=20000, help="calls per side per case per round (20000)"
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="GETs in each round's request loop (2000)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 3 rounds, 2000 calls, 200 GETs"
    )
    parser.add_argument(
        "--in-situ",
        action="store_true",
        help="also time each round's GETs through a client with httpx's own cookie store: "
        "case 10's saving inside whole requests, to set beside its loop's figure",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.iterations, args.requests = 3, 2000, 200
    if args.rounds < 1 or args.iterations < 1 or args.requests < 1:
        parser.error("--rounds, --iterations and --requests must be at least 1")
    print(
        f"shortcuts: {args.rounds} rounds of {args.iterations} calls per side per case, "
        f"and {args.requests} GETs at concurrency 1 per round",
        file=sys.stderr,
    )
    result = asyncio.run(run(args.rounds, args.iterations, args.requests, args.in_situ))
    rows = summarise(result)
    request, r1, r3 = _median_and_quartiles(result.request_us)
    print(
        f"client CPU per request (concurrency 1): median {request:.1f} us "
        f"[q1 {r1:.1f}, q3 {r3:.1f}] over {args.rounds} rounds of {args.requests} GETs; "
        f"the bar ({KEEP_AT_PERCENT}%) is {request * KEEP_AT_PERCENT / 100:.2f} us; "
        f"{100 * statistics.median(result.request_user_share):.0f}% of it in user mode"
    )
    if result.jar_request_us:
        shares = [
            100 * (jar - ours) / ours
            for jar, ours in zip(result.jar_request_us, result.request_us, strict=True)
        ]
        saved = statistics.median(
            jar - ours for jar, ours in zip(result.jar_request_us, result.request_us, strict=True)
        )
        share, s1, s3 = _median_and_quartiles(shares)
        print(
            f"in situ, case 10 (a second client with httpx's cookie store, requests "
            f"alternating): saves {saved:.1f} us = {share:.2f}% [q1 {s1:.2f}, q3 {s3:.2f}] "
            "of a request"
        )
    print()
    print(table(rows))
    print()
    for row in rows:
        print(f"{row.case.number:>3}. {row.case.title}: {row.verdict()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
