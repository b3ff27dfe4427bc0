"""The bench's report: every figure as JSON, and a summary table for the terminal.

The JSON is the source of truth: the terminal table and the plots
(:mod:`._plots`) are both drawn from it, so a report written by one run can be
plotted again later. Its shape::

    tool, version, created, machine {nproc, cpu, python, packages}, options
    clients    {key: {label, description}}
    scenarios  {name: {title, duration_s, load, hosts {name: profile}, outage_s?,
                       headline {client: {...the figures that answer the scenario...}},
                       results {client: {elapsed_s, cut_short, cpu_us_per_call,
                                         hosts {name: figures}, breaker [...],
                                         timeline {window_s, hosts {name: [window...]},
                                                   after_load {name: {from_s,
                                                                      upstream_requests}}}}}}}
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

from .. import __version__
from ._clients import ClientSpec
from ._figures import (
    amplification_between,
    breaker_timeline,
    host_figures,
    host_timeline,
    overhead,
    recovery_time,
    requests_after,
    window_of,
)
from ._load import OK
from ._runner import ClientRun, ScenarioResult
from ._scenarios import BenchOptions, outages_of

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["build_report", "explain", "machine", "print_summary", "report_json"]

_PACKAGES = ("httpx", "httpcore", "anyio", "h11", "pybreaker", "tenacity", "aiolimiter")


def machine() -> dict[str, Any]:
    """What the figures were measured on: they mean little without it."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    packages: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(),
        "packages": packages,
    }


def _scenario(result: ScenarioResult) -> dict[str, Any]:
    """One scenario's part of the report: its setup, each client's figures, the headline."""
    costs = overhead(result)
    outages = outages_of(result.hosts[result.scenario.focus])
    runs = {run.spec.key: run for run in result.runs}
    results = {key: _client_result(result, run, costs[key]) for key, run in runs.items()}
    headline = {
        key: _headline(result, run, results[key]["hosts"], costs[key], outages)
        for key, run in runs.items()
    }
    report: dict[str, Any] = {
        "title": result.scenario.title,
        "focus": result.scenario.focus,
        "duration_s": result.duration,
        "load": _load_of(result),
        "hosts": {name: profile.to_dict() for name, profile in result.hosts.items()},
        "headline": headline,
        "results": results,
    }
    if outages:
        report["outages_s"] = [{"start": start, "end": end} for start, end in outages]
    return report


def _client_result(result: ScenarioResult, run: ClientRun, cost: dict[str, Any]) -> dict[str, Any]:
    """One client's figures in one scenario: per host, over time, its breakers, its cost."""
    duration = result.duration
    window = window_of(duration)
    timeline = {
        name: host_timeline(log, run.received[name], result.bucket, window, duration)
        for name, log in run.logs.items()
    }
    # Requests the server received once the load had ended: not load in any window.
    after_load = {
        name: {
            "from_s": duration,
            "upstream_requests": requests_after(run.received[name], result.bucket, duration),
        }
        for name in run.logs
    }
    return {
        "elapsed_s": round(run.wall, 3),
        "cut_short": run.cut_short,
        **cost,
        "hosts": {
            name: host_figures(log, run.received[name], duration) for name, log in run.logs.items()
        },
        "timeline": {"window_s": window, "hosts": timeline, "after_load": after_load},
        "breaker": breaker_timeline(run, run.dependency_names()),
    }


def _headline(
    result: ScenarioResult,
    run: ClientRun,
    hosts: dict[str, Any],
    cost: dict[str, Any],
    outages: list[tuple[float, float]],
) -> dict[str, Any]:
    """The figures that answer the scenario's question, for one client."""
    figures = hosts[result.scenario.focus]
    line: dict[str, Any] = {
        "calls": figures["calls"],
        "success_ratio": figures["success_ratio"],
        "errors": sum(figures["errors"].values()),
        "errors_by_type": figures["errors"],
        "p50_ms": figures["latency_ms"]["p50"],
        "p99_ms": figures["latency_ms"]["p99"],
        "upstream_per_call": figures["upstream"]["per_call"],
    }
    if result.scenario.segments > 1:
        line.update(cost)
    if outages:
        line["outages"] = _outage_figures(result, run, outages)
    if result.scenario.name == "slow-dependency":
        slow = hosts["slow"]
        line["slow_ok"] = slow["ok"]
        line["slow_failed_fast"] = slow["errors"].get("BulkheadFullError", 0)
    return line


def _outage_figures(
    result: ScenarioResult, run: ClientRun, outages: list[tuple[float, float]]
) -> list[dict[str, Any]]:
    """Per outage of the focus host: requests per call within it, failures, recovery."""
    focus = result.scenario.focus
    log = run.logs[focus]
    next_starts = sorted(start for start, _ in outages)[1:]
    return [
        {
            "start_s": start,
            "end_s": end,
            **amplification_between(log, run.received[focus], result.bucket, start, end),
            "failed": sum(
                1
                for at, outcome in zip(log.starts, log.outcomes, strict=True)
                if start <= at < end and outcome != OK
            ),
            # Judged only until the next outage starts, which would fail calls anew.
            "recovery_s": recovery_time(
                log, end, next_starts[number] if number < len(next_starts) else result.duration
            ),
        }
        for number, (start, end) in enumerate(outages)
    ]


def _load_of(result: ScenarioResult) -> dict[str, Any]:
    """The traffic the scenario sent: the loop, each stream's rate or workers, grace, seed."""
    options = result.options
    return {
        "mode": options.load,
        "streams": [
            {
                "host": s.host,
                **(
                    {"rate_per_s": s.rate}
                    if options.load == "open"
                    else {"workers": s.workers, "think_time_s": s.think_time}
                ),
            }
            for s in result.streams
        ],
        "segments_per_client": result.scenario.segments,
        "grace_s": options.grace,
        "seed": options.seed,
    }


def build_report(
    results: Sequence[ScenarioResult],
    specs: Sequence[ClientSpec],
    options: dict[str, Any],
    descriptions: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every figure of a bench run, JSON-serialisable."""
    described: dict[str, dict[str, Any]] = dict(descriptions or {})
    for result in results:
        for run in result.runs:
            described.setdefault(run.spec.key, run.description)
    return {
        "tool": "resilient-client bench",
        "version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "options": options,
        "clients": {
            spec.key: {"label": spec.label, "description": described.get(spec.key, {})}
            for spec in specs
        },
        "scenarios": {result.scenario.name: _scenario(result) for result in results},
    }


def options_of(options: BenchOptions, **more: Any) -> dict[str, Any]:
    return {
        "load": options.load,
        "duration_s": options.duration,
        "rate_per_s": options.rate,
        "workers": options.workers,
        "seed": options.seed,
        "grace_s": options.grace,
        "max_calls": options.max_calls,
        "max_in_flight": options.max_in_flight,
        **more,
    }


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=1) + "\n"


# -- the terminal ------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _seconds(value: float | None) -> str:
    return "not within the run" if value is None else f"{value:.2f} s"


def _rows(scenario: dict[str, Any], keys: list[str]) -> list[list[str]]:
    """Label, then one cell per client. A row of one cell is a section title."""
    results = scenario["results"]
    rows: list[list[str]] = []
    for host in scenario["hosts"]:
        figures = [results[key]["hosts"][host] for key in keys]
        marker = (
            " (the question)" if host == scenario["focus"] and len(scenario["hosts"]) > 1 else ""
        )
        rows.append([f"host '{host}'{marker}"])
        rows.append(["  calls", *(str(f["calls"]) for f in figures)])
        rows.append(["  succeeded", *(_percent(f["success_ratio"]) for f in figures)])
        names = sorted({name for f in figures for name in f["errors"]})
        for name in names:
            rows.append([f"    {name}", *(str(f["errors"].get(name, 0)) for f in figures)])
        for level in ("p50", "p99", "max"):
            rows.append([f"  {level} ms", *(_ms(f["latency_ms"][level]) for f in figures)])
        rows.append(
            ["  upstream requests/call", *(_ratio(f["upstream"]["per_call"]) for f in figures)]
        )
    headline = scenario["headline"]
    if "cpu_us_per_call" in headline[keys[0]]:
        rows.append(["client cost"])
        rows.append(["  CPU µs/call", *(_ms(headline[k].get("cpu_us_per_call")) for k in keys)])
        rows.append(
            ["  CPU vs bare httpx", *(_ratio(headline[k].get("cpu_ratio_vs_httpx")) for k in keys)]
        )
        rows.append(["  calls/s", *(_ms(headline[k].get("calls_per_s")) for k in keys)])
    for number, window in enumerate(scenario.get("outages_s", [])):
        rows.append([f"outage {window['start']:g}-{window['end']:g} s"])
        rows.append(
            [
                "  upstream requests/call",
                *(_ratio(headline[k]["outages"][number]["per_call"]) for k in keys),
            ]
        )
        rows.append(
            [
                "  recovered after its end",
                *(_seconds(headline[k]["outages"][number]["recovery_s"]) for k in keys),
            ]
        )
    if any(results[k]["cut_short"] for k in keys):
        rows.append(
            [
                "  cut short at time limit",
                *("yes" if results[k]["cut_short"] else "no" for k in keys),
            ]
        )
    return rows


def explain(name: str, scenario: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """One plain sentence per client: the figures that answer the scenario's question."""
    lines = []
    for key, line in scenario["headline"].items():
        label = labels[key]
        errors = f"{line['errors']} errors in {line['calls']} calls"
        if name == "healthy":
            ratio = line.get("cpu_ratio_vs_httpx")
            cost = "the baseline" if ratio is None else f"{ratio:.2f}x bare httpx's CPU per call"
            lines.append(
                f"{label}: {_ms(line.get('cpu_us_per_call'))} µs CPU per call ({cost}), "
                f"p99 {_ms(line['p99_ms'])} ms"
            )
        elif name == "slow-dependency":
            lines.append(
                f"{label}: healthy host p99 {_ms(line['p99_ms'])} ms, {errors}; "
                f"slow host {line['slow_ok']} served, {line['slow_failed_fast']} failed fast"
            )
        elif name == "outage":
            outage = line["outages"][0]
            lines.append(
                f"{label}: {_ratio(outage['per_call'])} upstream requests per call during the "
                f"outage, calls succeeding again {_seconds(outage['recovery_s'])} after it ended"
            )
        else:
            lines.append(
                f"{label}: {_percent(line['success_ratio'])} of calls succeeded, "
                f"{_ratio(line['upstream_per_call'])} upstream requests per call, "
                f"p99 {_ms(line['p99_ms'])} ms"
            )
    return lines


# How to read each scenario's table, in a sentence or two.
NOTES = {
    "healthy": "CPU per call is the whole client process (the load generator too, the same for "
    "every client), the median over segments that alternate the clients: read the ratio to "
    "bare httpx rather than the microseconds.",
    "slow-dependency": "With one shared pool, calls to the slow host take every connection and "
    "the healthy host's calls queue behind them; a pool and a bulkhead per host keep it apart, "
    "and calls beyond the bulkhead fail fast instead of piling up.",
    "outage": "An open breaker keeps the failing host's traffic near zero and fails calls at "
    "once; it probes again only after breaker.open_for (5 s by default), which is how long "
    "calls keep failing after the host is back: choose open_for from that.",
    "flapping": "Retries lift the success ratio at the price of upstream requests per call; the "
    "retry budget caps that price, and a breaker that opens on runs of failures trades "
    "successes for load shed.",
    "throttled": "Retrying a 429 early only spends the host's quota on refusals. A 429 does not "
    "count for the breaker; its Retry-After pauses every call to the host, but the calls queued "
    "meanwhile go out together and draw the next 429: a rate_limit at the quota keeps under it.",
    "degrading": "Watch where latency crosses the timeouts and when the breaker first opens.",
    "payments": "The example of docs/tuning.md: compare its settings' column with the defaults'.",
}


def print_summary(report: dict[str, Any], console: Console) -> None:
    """One table per scenario (rows: figures; columns: clients), then what it says."""
    from rich.table import Table

    labels = {key: client["label"] for key, client in report["clients"].items()}
    for name, scenario in report["scenarios"].items():
        keys = [key for key in labels if key in scenario["results"]]
        table = Table(
            title=f"{name}: {scenario['title']} ({scenario['load']['mode']} loop, "
            f"{scenario['duration_s']:g} s)",
            title_justify="left",
        )
        table.add_column("")
        for key in keys:
            table.add_column(labels[key], justify="right")
        for row in _rows(scenario, keys):
            if len(row) == 1:
                table.add_row(f"[bold]{row[0]}[/bold]", *([""] * len(keys)))
            else:
                table.add_row(*row)
        console.print(table)
        for sentence in explain(name, scenario, labels):
            console.print(f"  {sentence}", highlight=False)
        if name in NOTES:
            console.print(f"  [dim]{NOTES[name]}[/dim]", highlight=False)
        console.print()


def outcome_names(report: dict[str, Any]) -> Iterable[str]:
    """Every outcome any client had in any scenario (for the plots' colours)."""
    seen: dict[str, None] = {OK: None}
    for scenario in report["scenarios"].values():
        for result in scenario["results"].values():
            for host in result["hosts"].values():
                for name in host["errors"]:
                    seen.setdefault(name, None)
    return list(seen)
