"""The slow-dependency demo: a slow host beside a healthy one, bare httpx vs resilient_client.

The scenario, run once per client against a fresh upstream process::

    t = 0            ``slow_callers`` tasks each send one request to the slow host
    t = head_start   ``healthy_callers`` tasks loop on the healthy host for ``duration``
    end              every caller has finished (or the run's time limit cancelled it)

The pieces the ``bench`` command will share live here as small units of their
own: :class:`LatencyRecorder` (latencies and outcomes, with percentiles),
:func:`timed_get` (one call, timed and classified) and :func:`run_scenario`.
"""

from __future__ import annotations

import asyncio
import json
import math
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx._config import DEFAULT_LIMITS

from ._client import AsyncClient
from ._exceptions import BulkheadFullError
from ._settings import BulkheadPolicy
from ._upstream import UpstreamProcess

__all__ = [
    "OK",
    "UNFINISHED",
    "DemoReport",
    "LatencyRecorder",
    "RequestBudget",
    "RunResult",
    "SlowDependencyScenario",
    "format_report",
    "report_json",
    "run_client",
    "run_demo",
    "run_scenario",
    "timed_get",
]

OK = "ok"
# The outcome of a call the run's time limit cancelled: neither a success nor the client's error.
UNFINISHED = "unfinished at the run's time limit"
_BULKHEAD_FULL = BulkheadFullError.__name__


# -- measuring calls ----------------------------------------------------------------------------


class LatencyRecorder:
    """The latency and outcome of every call in a series.

    Latencies are kept for every call, failed ones included: a caller waited
    that long whatever the outcome, and a timeout is often the slowest call.
    """

    def __init__(self) -> None:
        self._latencies: list[float] = []
        self._sorted = True
        self.outcomes: Counter[str] = Counter()

    def record(self, seconds: float, outcome: str = OK) -> None:
        self._latencies.append(seconds)
        self._sorted = False
        self.outcomes[outcome] += 1

    @property
    def count(self) -> int:
        return len(self._latencies)

    @property
    def ok(self) -> int:
        return self.outcomes[OK]

    @property
    def errors(self) -> dict[str, int]:
        """Failed calls by outcome (exception type name or ``HTTP <status>``), most first."""
        return {name: n for name, n in self.outcomes.most_common() if name != OK}

    def percentile(self, fraction: float) -> float | None:
        """Nearest-rank percentile in seconds (``fraction`` 0.5 is p50); None with no calls."""
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be within [0, 1], got {fraction}")
        if not self._latencies:
            return None
        if not self._sorted:
            self._latencies.sort()
            self._sorted = True
        rank = max(1, math.ceil(fraction * len(self._latencies)))
        return self._latencies[rank - 1]

    def summary(self) -> dict[str, Any]:
        """Counts and p50, p99 and max latency in milliseconds, JSON-serialisable."""

        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1000, 3)

        return {
            "requests": self.count,
            "ok": self.ok,
            "errors": self.errors,
            "latency_ms": {
                "p50": ms(self.percentile(0.5)),
                "p99": ms(self.percentile(0.99)),
                "max": ms(self.percentile(1.0)),
            },
        }


async def timed_get(client: httpx.AsyncClient, url: str, recorder: LatencyRecorder) -> None:
    """GET ``url`` (body read), recording its latency and outcome; never raises an Exception."""
    start = time.perf_counter()
    outcome = OK
    try:
        response = await client.get(url)
        if not response.is_success:
            outcome = f"HTTP {response.status_code}"
    except asyncio.CancelledError:
        recorder.record(time.perf_counter() - start, UNFINISHED)
        raise
    except Exception as exc:
        # The demo's point is to show which errors each client produces, not to stop at one.
        outcome = type(exc).__name__
    recorder.record(time.perf_counter() - start, outcome)


# -- the scenario -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlowDependencyScenario:
    """How hard the slow host is hit and how long the healthy host is measured."""

    slow_callers: int = 200
    healthy_callers: int = 10
    duration: float = 3.0
    slow_delay: float = 2.0
    # Pause between one caller's healthy requests. A caller with no pause at all
    # would measure how fast one CPU can go (a request costs the client about a
    # millisecond of CPU here), not whether the slow host holds the healthy one up.
    think_time: float = 0.02
    # Long enough for every slow call to have been sent (or queued) before the healthy ones.
    head_start: float = 0.25
    # Bounds the healthy loops by count as well as time, whatever the machine's speed.
    max_healthy_requests: int = 50_000
    # None: derived from the other fields (see ``run_time_limit``).
    time_limit: float | None = None

    @property
    def run_time_limit(self) -> float:
        """The longest one client run may take before what is left of it is cancelled.

        Generous by default: either client's own timeouts (httpx's 5 s per phase,
        resilient_client's 10 s per call) end every call well before it. It is only
        there so that the demo ends whatever the clients do.
        """
        if self.time_limit is not None:
            return self.time_limit
        return self.head_start + self.duration + self.slow_delay + 15.0


@dataclass
class RunResult:
    """What happened with one client in one run of the scenario."""

    client: str
    slow: LatencyRecorder = field(default_factory=LatencyRecorder)
    healthy: LatencyRecorder = field(default_factory=LatencyRecorder)
    elapsed: float = 0.0
    timed_out: bool = False
    # The resilient client's bulkhead policy; None for a client without one.
    bulkhead: BulkheadPolicy | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def bulkhead_full(self) -> int:
        return self.slow.outcomes[_BULKHEAD_FULL]

    @property
    def slow_other_errors(self) -> dict[str, int]:
        return {name: n for name, n in self.slow.errors.items() if name != _BULKHEAD_FULL}

    def as_dict(self) -> dict[str, Any]:
        slow = self.slow.summary()
        slow["bulkhead_full"] = self.bulkhead_full
        slow["other_errors"] = self.slow_other_errors
        return {
            "client": self.client,
            "elapsed_s": round(self.elapsed, 3),
            "timed_out": self.timed_out,
            "healthy": self.healthy.summary(),
            "slow": slow,
            **self.details,
        }


class RequestBudget:
    """How many more requests a group of loops may send, shared by all of them."""

    def __init__(self, requests: int) -> None:
        self.left = requests

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def _healthy_loop(
    client: httpx.AsyncClient,
    url: str,
    recorder: LatencyRecorder,
    stop_at: float,
    budget: RequestBudget,
    think_time: float,
) -> None:
    while time.perf_counter() < stop_at and budget.take():
        await timed_get(client, url, recorder)
        await asyncio.sleep(think_time)


async def run_scenario(
    client: httpx.AsyncClient,
    slow_url: str,
    healthy_url: str,
    scenario: SlowDependencyScenario,
    result: RunResult,
) -> None:
    """Drive the scenario through ``client``, recording into ``result``, within its time limit.

    Records as calls finish, so a run cut short by the time limit still reports
    what it saw (and marks ``result.timed_out``). Does not close the client.
    """
    start = time.perf_counter()
    try:
        async with asyncio.timeout(scenario.run_time_limit), asyncio.TaskGroup() as group:
            for _ in range(scenario.slow_callers):
                group.create_task(timed_get(client, slow_url, result.slow))
            await asyncio.sleep(scenario.head_start)
            stop_at = time.perf_counter() + scenario.duration
            # One budget for all the loops: the cap is on the run, not on each caller.
            budget = RequestBudget(scenario.max_healthy_requests)
            for _ in range(scenario.healthy_callers):
                group.create_task(
                    _healthy_loop(
                        client, healthy_url, result.healthy, stop_at, budget, scenario.think_time
                    )
                )
    except TimeoutError:
        result.timed_out = True
    finally:
        result.elapsed = time.perf_counter() - start


# -- the demo: both clients, side by side -------------------------------------------------------

ClientFactory = Callable[[], httpx.AsyncClient]
# Closing a client only closes sockets; taking longer than this means something is stuck.
_CLOSE_TIMEOUT = 10.0


def _bare_httpx() -> httpx.AsyncClient:
    # trust_env=False only keeps proxies configured in the environment away from the
    # 127.0.0.1 traffic; pools, limits and timeouts stay the defaults the demo is about.
    return httpx.AsyncClient(trust_env=False)


def _resilient() -> httpx.AsyncClient:
    return AsyncClient(trust_env=False)


CLIENTS: tuple[tuple[str, ClientFactory], ...] = (
    ("httpx.AsyncClient", _bare_httpx),
    ("resilient_client.AsyncClient", _resilient),
)


async def run_client(
    name: str, factory: ClientFactory, scenario: SlowDependencyScenario
) -> RunResult:
    """One client against an upstream of its own, so no run inherits another's leftovers."""
    result = RunResult(client=name)
    async with UpstreamProcess(ports=2) as upstream:
        slow_url = upstream.url(0, f"/?delay={scenario.slow_delay}")
        healthy_url = upstream.url(1, "/")
        result.details["hosts"] = {"slow": slow_url, "healthy": healthy_url}
        client = factory()
        try:
            await run_scenario(client, slow_url, healthy_url, scenario, result)
            if isinstance(client, AsyncClient):
                result.bulkhead = client.resilience_settings.default.bulkhead
                result.details["health"] = client.health()
        finally:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await client.aclose()
    return result


@dataclass
class DemoReport:
    """Both runs of the scenario, and what the clients were configured with."""

    scenario: SlowDependencyScenario
    runs: list[RunResult]

    @property
    def timed_out(self) -> bool:
        return any(run.timed_out for run in self.runs)

    def as_dict(self) -> dict[str, Any]:
        scenario = self.scenario
        return {
            "scenario": {
                "slow_callers": scenario.slow_callers,
                "healthy_callers": scenario.healthy_callers,
                "duration_s": scenario.duration,
                "slow_delay_s": scenario.slow_delay,
                "head_start_s": scenario.head_start,
                "max_healthy_requests": scenario.max_healthy_requests,
                "time_limit_s": scenario.run_time_limit,
            },
            "httpx_shared_pool": {
                "max_connections": DEFAULT_LIMITS.max_connections,
                "max_keepalive_connections": DEFAULT_LIMITS.max_keepalive_connections,
            },
            "timed_out": self.timed_out,
            "runs": {run.client: run.as_dict() for run in self.runs},
        }


async def run_demo(
    scenario: SlowDependencyScenario,
    *,
    clients: tuple[tuple[str, ClientFactory], ...] = CLIENTS,
    progress: Callable[[str], None] | None = None,
) -> DemoReport:
    runs = []
    for name, factory in clients:
        if progress is not None:
            progress(f"running the scenario with {name} ...")
        runs.append(await run_client(name, factory, scenario))
    return DemoReport(scenario, runs)


# -- the report ---------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Plain-text columns, the first left-aligned, the rest right-aligned.

    A row of one cell is a section title, printed as it is.
    """
    table = [header, *(row for row in rows if len(row) > 1)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        if len(row) == 1:
            lines.append(row[0])
            continue
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_report(report: DemoReport) -> str:
    """The side-by-side table, then what it means, as plain text."""
    runs = report.runs
    scenario = report.scenario

    def cells(label: str, values: Iterable[object]) -> list[str]:
        return [label, *(str(value) for value in values)]

    def by_type(errors: list[dict[str, int]]) -> list[list[str]]:
        names = sorted({name for counts in errors for name in counts})
        return [cells(f"    {name}", (counts.get(name, 0) for counts in errors)) for name in names]

    healthy = [run.healthy for run in runs]
    slow = [run.slow for run in runs]
    rows = [
        [
            f"healthy host ({scenario.healthy_callers} callers, "
            f"looping for {_seconds(scenario.duration)})"
        ],
        cells("  requests", (r.count for r in healthy)),
        cells("  errors", (sum(r.errors.values()) for r in healthy)),
        *by_type([r.errors for r in healthy]),
        cells("  p50 latency (ms)", (_ms(r.percentile(0.5)) for r in healthy)),
        cells("  p99 latency (ms)", (_ms(r.percentile(0.99)) for r in healthy)),
        cells("  max latency (ms)", (_ms(r.percentile(1.0)) for r in healthy)),
        [
            f"slow host ({scenario.slow_callers} callers, "
            f"answers after {_seconds(scenario.slow_delay)})"
        ],
        cells("  ok", (r.ok for r in slow)),
        cells(f"  failed fast ({_BULKHEAD_FULL})", (run.bulkhead_full for run in runs)),
        cells("  other errors", (sum(run.slow_other_errors.values()) for run in runs)),
        *by_type([run.slow_other_errors for run in runs]),
        cells("  p50 latency (ms)", (_ms(r.percentile(0.5)) for r in slow)),
        cells("  max latency (ms)", (_ms(r.percentile(1.0)) for r in slow)),
        ["run"],
        cells(
            "  elapsed (s)",
            (f"{run.elapsed:.1f}{' (cut short)' if run.timed_out else ''}" for run in runs),
        ),
    ]
    lines = [
        "Slow-dependency demo: the same scenario once with each client "
        "(latencies include failed calls)",
        "",
        *_table(["", *(run.client for run in runs)], rows),
        "",
        *_explain(report),
    ]
    return "\n".join(lines)


def _explain(report: DemoReport) -> list[str]:
    sentences = []
    shared = DEFAULT_LIMITS.max_connections
    slow_callers = report.scenario.slow_callers
    for run in report.runs:
        healthy = run.healthy
        outcome = (
            f"healthy p99 {_ms(healthy.percentile(0.99))} ms, "
            f"{sum(healthy.errors.values())} errors in {healthy.count} requests"
        )
        if run.bulkhead is None:
            if shared is not None and slow_callers > shared:
                sentences.append(
                    f"{run.client} keeps one pool of {shared} connections for every host: the "
                    f"{slow_callers} slow calls took them all and queued for more, so the healthy "
                    f"host's calls waited behind them ({outcome})."
                )
            else:
                sentences.append(
                    f"{run.client} keeps one pool of {shared} connections for every host; "
                    f"{slow_callers} slow calls did not fill it, so the healthy host was not "
                    f"starved this time ({outcome}); more than {shared} slow callers starve it."
                )
        else:
            bulkhead = run.bulkhead
            rejected = (
                f"{run.bulkhead_full} slow calls failed with {_BULKHEAD_FULL} instead of piling up"
                if run.bulkhead_full
                else f"the {slow_callers} slow calls fitted in it, so none was rejected"
            )
            sentences.append(
                f"{run.client} gives each host its own pool and a bulkhead of "
                f"{bulkhead.max_concurrent} calls in flight plus {bulkhead.max_queue} queued "
                f"(for at most {_seconds(bulkhead.queue_timeout)}): {rejected}, and the healthy "
                f"host's calls used a pool of their own ({outcome})."
            )
        if run.timed_out:
            sentences.append(
                f"Warning: the {run.client} run hit the demo's time limit of "
                f"{_seconds(report.scenario.run_time_limit)}; its figures are partial."
            )
    return [textwrap.fill(sentence, width=100) for sentence in sentences]


def report_json(report: DemoReport) -> str:
    return json.dumps(report.as_dict(), indent=2, sort_keys=False) + "\n"
