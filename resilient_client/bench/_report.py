"""The bench's report: every figure as JSON.

The JSON is the source of truth: the terminal tables (:mod:`._terminal`) and
the plots (:mod:`._plots`) are both drawn from it, so a report written by one run can be
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
    do_no_harm [{scenario, host, kind, client, figures and a verdict}]   (see ._harm)
    sweep      [{concurrency, clients {key: {ok_per_s, errors, p99_ms, ...}}}]  (._sweep)
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import Any

from .. import __version__
from ._clients import ClientSpec
from ._figures import (
    amplification_between,
    breaker_timeline,
    host_figures,
    host_timeline,
    overhead,
    quota_use,
    recovery_time,
    requests_after,
    window_of,
)
from ._harm import do_no_harm
from ._load import OK
from ._runner import ClientRun, ScenarioResult
from ._scenarios import BenchOptions, outages_of
from ._sweep import sweep_table

__all__ = ["build_report", "machine", "options_of", "outcome_names", "report_json"]

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
    if result.scenario.concurrency is not None:
        report["concurrency"] = result.scenario.concurrency
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
    throttle = result.hosts[result.scenario.focus].throttle
    if throttle is not None:
        received = run.received[result.scenario.focus]
        line["quota"] = quota_use(received, result.bucket, throttle.rate, result.duration)
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
    report: dict[str, Any] = {
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
    report["do_no_harm"] = do_no_harm(report)
    sweep = sweep_table(report)
    if sweep:
        report["sweep"] = sweep
    return report


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


def outcome_names(report: dict[str, Any]) -> Iterable[str]:
    """Every outcome any client had in any scenario (for the plots' colours)."""
    seen: dict[str, None] = {OK: None}
    for scenario in report["scenarios"].values():
        for result in scenario["results"].values():
            for host in result["hosts"].values():
                for name in host["errors"]:
                    seen.setdefault(name, None)
    return list(seen)
