"""The "do no harm" table: per scenario and host, a resilient client beside bare httpx.

Issue 12's rule: with the library, no host of any scenario may do worse than
with no resilience at all. Each row holds one host of one scenario: its
successful calls and p99 with bare httpx and with the client judged, and a
verdict:

``ok``
    at least bare httpx's successes and, for a healthy host beside a slow or
    failing one, a p99 within :data:`HEALTHY_P99_MS`;
``excused``
    fewer successes than bare httpx on a troubled host, where bare's extra
    successes came at the cost of the scenario's healthy host (its p99 beyond
    :data:`HEALTHY_P99_MS` and above ours, or fewer of its calls succeeding, with bare
    httpx): the row says so;
``worse``
    anything else, with the numbers.

Computed from the report's JSON alone (:func:`do_no_harm`), so a report written
earlier can be judged again; :func:`harm_cells` and :func:`harm_markdown` lay
the rows out for the terminal and for a results note.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BASELINE",
    "HEALTHY_P99_MS",
    "do_no_harm",
    "harm_cells",
    "harm_markdown",
    "troubled",
]

BASELINE = "httpx"
# The p99 a healthy host keeps beside a slow or failing one (issue 12's target).
HEALTHY_P99_MS = 100.0
# A host whose median answer takes this long is slow, whatever else it does.
_SLOW_MEDIAN_S = 0.1
_FAULTS = ("error_ratio", "reset_ratio", "hang_ratio", "drip_ratio")
# The clients judged: the library's (hand-written retries are not ours to judge).
_JUDGED = ("defaults", "settings")


def troubled(profile: Mapping[str, Any]) -> bool:
    """Whether a host's profile (as the report holds it) is slow or fails in any way."""
    latency = profile.get("latency") or {}
    return bool(
        profile.get("outages")
        or profile.get("throttle")
        or profile.get("degradation")
        or any(profile.get(name, 0) for name in _FAULTS)
        or latency.get("median", 0) >= _SLOW_MEDIAN_S
        or (latency.get("tail_ratio", 0) and latency.get("tail", 0) >= _SLOW_MEDIAN_S)
    )


def _role(scenario: Mapping[str, Any], host: str) -> str:
    hosts = scenario["hosts"]
    if troubled(hosts[host]):
        return "troubled"
    if any(troubled(profile) for profile in hosts.values()):
        return "healthy beside a troubled host"
    return "healthy"


def _figures(scenario: Mapping[str, Any], key: str, host: str) -> tuple[int, float | None]:
    figures = scenario["results"][key]["hosts"][host]
    return figures["ok"], figures["latency_ms"]["p99"]


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def _cost(scenario: Mapping[str, Any], key: str) -> str | None:
    """What bare httpx's way cost the scenario's healthy hosts, in words; None if nothing."""
    costs = []
    for host in scenario["hosts"]:
        if _role(scenario, host) != "healthy beside a troubled host":
            continue
        ok, p99 = _figures(scenario, key, host)
        bare_ok, bare_p99 = _figures(scenario, BASELINE, host)
        slower = bare_p99 is not None and bare_p99 > HEALTHY_P99_MS and bare_p99 > (p99 or 0)
        if slower or bare_ok < ok:
            costs.append(
                f"its healthy host '{host}': p99 {_ms(bare_p99)} against {_ms(p99)}, "
                f"{bare_ok} successes against {ok}"
            )
    return "; ".join(costs) or None


def _row(scenario: Mapping[str, Any], name: str, key: str, host: str) -> dict[str, Any]:
    role = _role(scenario, host)
    ok, p99 = _figures(scenario, key, host)
    bare_ok, bare_p99 = _figures(scenario, BASELINE, host)
    fewer = ok < bare_ok
    slow = role == "healthy beside a troubled host" and (p99 is None or p99 > HEALTHY_P99_MS)
    problems = []
    if fewer:
        share = f", {(ok - bare_ok) / bare_ok:+.1%}" if bare_ok else ""
        problems.append(f"{ok} successes against bare httpx's {bare_ok} ({ok - bare_ok:+d}{share})")
    if slow:
        problems.append(f"p99 {_ms(p99)}, more than {HEALTHY_P99_MS:g} ms beside a troubled host")
    cost = _cost(scenario, key) if fewer and not slow and role == "troubled" else None
    if not problems:
        verdict, why = "ok", ""
    elif cost is not None:
        verdict, why = "excused", f"bare's extra successes on this host cost {cost}"
    else:
        verdict, why = "worse", "; ".join(problems)
    return {
        "scenario": name,
        "host": host,
        "role": role,
        "client": key,
        "ok": ok,
        "p99_ms": p99,
        "httpx_ok": bare_ok,
        "httpx_p99_ms": bare_p99,
        "verdict": verdict,
        "why": why,
    }


def do_no_harm(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per scenario, host and resilient client run beside bare httpx (see above)."""
    rows: list[dict[str, Any]] = []
    for name, scenario in report["scenarios"].items():
        results = scenario["results"]
        if BASELINE not in results:
            continue
        for key in (key for key in _JUDGED if key in results):
            rows.extend(_row(scenario, name, key, host) for host in scenario["hosts"])
    return rows


_HEADER = [
    "scenario",
    "host",
    "kind",
    "client",
    "ok (httpx)",
    "ok",
    "p99 (httpx)",
    "p99",
    "verdict",
]
_KINDS = {"healthy beside a troubled host": "healthy, beside"}


def harm_cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows of text (a verdict other than ok carries its why)."""
    cells = []
    for row in rows:
        verdict = row["verdict"] if row["verdict"] == "ok" else f"{row['verdict']}: {row['why']}"
        cells.append(
            [
                row["scenario"],
                row["host"],
                _KINDS.get(row["role"], row["role"]),
                row["client"],
                str(row["httpx_ok"]),
                str(row["ok"]),
                _ms(row["httpx_p99_ms"]),
                _ms(row["p99_ms"]),
                verdict,
            ]
        )
    return _HEADER, cells


def harm_markdown(rows: list[dict[str, Any]]) -> str:
    """The table in Markdown, as a results note shows it."""
    header, cells = harm_cells(rows)
    right = {4, 5, 6, 7}
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"
