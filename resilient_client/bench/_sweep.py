"""The concurrency sweep's table: per level of callers, each client's throughput beside bare's.

The sweep's levels are ordinary scenarios in the report (``sweep-<n>``, each
with its ``concurrency``), run in a closed loop with the clients alternating in
short segments. :func:`sweep_table` reads them back out of the report's JSON:
per level and client, successful calls per second (successes over the client's
time in its segments, drains included), errors, p99, and the ratio of
successful calls per second to bare httpx's at the same level. Successes, not
calls: a client that fails calls fast would otherwise look fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["sweep_cells", "sweep_markdown", "sweep_table"]

_BASELINE = "httpx"


def sweep_table(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per sweep level, in the order run: ``{concurrency, clients: {key: {...}}}``."""
    rows = []
    for scenario in report["scenarios"].values():
        level = scenario.get("concurrency")
        if level is None:
            continue
        clients: dict[str, dict[str, Any]] = {}
        for key, result in scenario["results"].items():
            figures = result["hosts"][scenario["focus"]]
            elapsed = result["elapsed_s"]
            clients[key] = {
                "ok_per_s": round(figures["ok"] / elapsed, 1) if elapsed else None,
                "calls": figures["calls"],
                "errors": figures["calls"] - figures["ok"],
                "errors_by_type": figures["errors"],
                "p50_ms": figures["latency_ms"]["p50"],
                "p99_ms": figures["latency_ms"]["p99"],
            }
        base = clients.get(_BASELINE, {}).get("ok_per_s")
        for key, entry in clients.items():
            if key != _BASELINE and base and entry["ok_per_s"] is not None:
                entry["ratio_vs_httpx"] = round(entry["ok_per_s"] / base, 3)
        rows.append({"concurrency": level, "clients": clients})
    return rows


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def sweep_cells(
    rows: list[dict[str, Any]], labels: Mapping[str, str]
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of text: per level, each client's ok/s, errors and p99, then the ratio.

    Columns are named by the clients' keys (``httpx``, ``defaults``), which fit a terminal.
    """
    keys = [key for key in labels if any(key in row["clients"] for row in rows)]
    header = ["callers"]
    for key in keys:
        header += [f"{key} ok/s", "errors", "p99 ms"]
    others = [key for key in keys if key != _BASELINE]
    header += [f"{key}/{_BASELINE}" for key in others]
    cells = []
    for row in rows:
        figures = row["clients"]
        line = [str(row["concurrency"])]
        for key in keys:
            entry = figures.get(key, {})
            line += [
                _number(entry.get("ok_per_s")),
                str(entry.get("errors", "-")),
                _number(entry.get("p99_ms")),
            ]
        ratios = (figures.get(key, {}).get("ratio_vs_httpx") for key in others)
        line += ["-" if ratio is None else f"{ratio:.2f}" for ratio in ratios]
        cells.append(line)
    return header, cells


def sweep_markdown(rows: list[dict[str, Any]], labels: Mapping[str, str]) -> str:
    header, cells = sweep_cells(rows, labels)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"
