"""The bench report in the terminal: a table per scenario, the sweep's, and the do-no-harm table.

Drawn from the report's JSON (:mod:`._report`), with rich: per scenario a table
(rows: figures, columns: clients), a sentence per client on the figures that
answer the scenario's question and a note on how to read them; then the
concurrency sweep's levels in one table (:mod:`._sweep`); then, last, the "do
no harm" table (:mod:`._harm`): what a user who ran ``--scenario all`` reads first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._harm import harm_cells
from ._sweep import sweep_cells

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["NOTES", "explain", "print_summary"]


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
    rows += _quota_rows(headline, keys)
    if any(results[k]["cut_short"] for k in keys):
        rows.append(
            [
                "  cut short at time limit",
                *("yes" if results[k]["cut_short"] else "no" for k in keys),
            ]
        )
    return rows


def _quota_rows(headline: dict[str, Any], keys: list[str]) -> list[list[str]]:
    """A throttling host's quota: its share used, the 429s drawn, the time spent sending."""
    if not all("quota" in headline[k] for k in keys):
        return []
    quotas = [headline[k]["quota"] for k in keys]
    return [
        [f"quota {quotas[0]['quota_per_s']:g} requests/s"],
        ["  share used while sending", *(_percent(q["quota_share"]) for q in quotas)],
        ["  share used during the load", *(_percent(q["quota_share_during_load"]) for q in quotas)],
        ["  answered upstream", *(str(q["upstream_ok"]) for q in quotas)],
        ["  429s drawn", *(str(q["upstream_429"]) for q in quotas)],
        ["  seconds sending", *(f"{q['sending_s']:g}" for q in quotas)],
    ]


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
        elif "quota" in line:
            quota = line["quota"]
            lines.append(
                f"{label}: {_percent(line['success_ratio'])} of calls succeeded, "
                f"{_percent(quota['quota_share'])} of the quota used while sending "
                f"({_percent(quota['quota_share_during_load'])} during the load), "
                f"{quota['upstream_429']} 429s drawn"
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
    "once; it probes again only when its open period ends, which bounds how long calls keep "
    "failing after the host is back ('recovered after its end': from then on, at least 95% "
    "of the calls of every quarter second succeeded).",
    "flapping": "Retries lift the success ratio at the price of upstream requests per call; the "
    "retry budget caps that price, and a breaker that opens on runs of failures trades "
    "successes for load shed.",
    "throttled": "Retrying a 429 early only spends the host's quota on refusals. The quota's "
    "share used is the requests the host answered over its quota times the seconds the client "
    "was sending (the bucket's burst lets it pass 100% slightly); every 429 drawn is a request "
    "the host refused.",
    "degrading": "Watch where latency crosses the timeouts and when the breaker first opens.",
    "payments": "The example of docs/tuning.md: compare its settings' column with the defaults'.",
}


def print_summary(report: dict[str, Any], console: Console) -> None:
    """One table per scenario (rows: figures; columns: clients), then what it says; then the
    sweep's table and the do-no-harm table."""
    labels = {key: client["label"] for key, client in report["clients"].items()}
    for name, scenario in report["scenarios"].items():
        if "concurrency" not in scenario:  # the sweep's levels share one table
            _print_scenario(name, scenario, labels, console)
    if report.get("sweep"):
        header, cells = sweep_cells(report["sweep"], labels)
        title = "concurrency sweep: callers in a closed loop on a healthy 2 ms host"
        console.print(_table(title, header, cells))
        console.print(f"  [dim]{SWEEP_NOTE}[/dim]", highlight=False)
        console.print()
    if report.get("do_no_harm"):
        header, cells = harm_cells(report["do_no_harm"])
        console.print(_table("do no harm: each host against bare httpx", header, cells))
        console.print(f"  [dim]{HARM_NOTE}[/dim]", highlight=False)
        console.print()


SWEEP_NOTE = (
    "ok/s: successful calls per second over each client's segments (alternating, drains "
    "included); the ratio is the client's ok/s over bare httpx's at the same level."
)
HARM_NOTE = (
    "ok: at least bare httpx's successes and, for a healthy host beside a slow or failing one, "
    "a p99 of at most 100 ms. excused: bare's extra successes on a troubled host cost its "
    "healthy host. worse: anything else, with the numbers."
)


def _table(title: str, header: list[str], cells: list[list[str]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for index, name in enumerate(header):
        table.add_column(name, justify="left" if index == 0 else "right")
    for row in cells:
        table.add_row(*row)
    return table


def _print_scenario(
    name: str, scenario: dict[str, Any], labels: dict[str, str], console: Console
) -> None:
    from rich.table import Table

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
