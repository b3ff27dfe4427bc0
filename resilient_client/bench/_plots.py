"""The bench report's plots, drawn from its JSON with matplotlib (Agg, no display needed).

Four PNG files per scenario, each with one colour per client throughout:

=============================  ==============================================================
``<scenario>-latency.png``     p50 (dashed) and p99 (solid) latency of the calls started in
                               each time window, one panel per host, log scale
``<scenario>-errors.png``      calls by outcome (errors by type), one group of bars per client
``<scenario>-breaker.png``     each client's breaker state per host over time (closed,
                               half-open, open), as sampled from ``client.health()``
``<scenario>-load.png``        offered calls/s (dashed) against requests/s the upstream
                               received (solid), per host: retry amplification made visible;
                               requests received after the load ended are counted in a
                               note, not drawn as load
``sweep.png``                  the concurrency sweep, when run: successful calls/s and p99
                               per client against the callers in flight (its levels get no
                               plots of their own)
=============================  ==============================================================

matplotlib is imported only here, and only when plots are drawn, so the rest of
the package never pays for it. Figures are built with ``matplotlib.figure.Figure``
rather than pyplot: no global state, no GUI backend, nothing left open.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PLOTS", "plot_report"]

PLOTS = ("latency", "errors", "breaker", "load")
_STATES = {"closed": 0, "half-open": 1, "half_open": 1, "open": 2}
_WIDTH = 10.0


def _colours(keys: Sequence[str]) -> dict[str, str]:
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    return {key: palette[index % len(palette)] for index, key in enumerate(keys)}


def _figure(rows: int, title: str) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(_WIDTH, 2.6 * rows + 0.8), layout="constrained")
    axes = figure.subplots(rows, 1, squeeze=False)
    figure.suptitle(title, fontsize=11)
    return figure, [row[0] for row in axes]


def _latency(name: str, scenario: dict[str, Any], labels: dict[str, str]) -> Figure:
    hosts = list(scenario["hosts"])
    figure, axes = _figure(len(hosts), f"{name}: latency of the calls started in each window")
    colours = _colours(list(scenario["results"]))
    for ax, host in zip(axes, hosts, strict=True):
        positive = False
        for key, result in scenario["results"].items():
            rows = result["timeline"]["hosts"][host]
            for level, style in (("p50_ms", "--"), ("p99_ms", "-")):
                points = [(r["t"], r[level]) for r in rows if r[level]]
                if not points:
                    continue
                positive = True
                ax.plot(
                    [t for t, _ in points],
                    [v for _, v in points],
                    style,
                    color=colours[key],
                    label=f"{labels[key]} {level[:3]}",
                    linewidth=1.4 if level == "p99_ms" else 1.0,
                )
        _mark_outage(ax, scenario)
        ax.set_title(f"host '{host}'", fontsize=10)
        ax.set_xlabel("seconds into the run")
        ax.set_ylabel("ms")
        if positive:
            ax.set_yscale("log")
            ax.legend(fontsize=7, ncols=2)
        ax.grid(True, alpha=0.3)
    return figure


def _errors(name: str, scenario: dict[str, Any], labels: dict[str, str]) -> Figure:
    hosts = list(scenario["hosts"])
    figure, axes = _figure(len(hosts), f"{name}: calls by outcome")
    keys = list(scenario["results"])
    for ax, host in zip(axes, hosts, strict=True):
        figures = {key: scenario["results"][key]["hosts"][host] for key in keys}
        outcomes = ["ok", *sorted({e for f in figures.values() for e in f["errors"]})]
        width = 0.8 / max(1, len(outcomes))
        colours = _colours(outcomes)
        for index, outcome in enumerate(outcomes):
            values = [
                figures[k]["ok"] if outcome == "ok" else figures[k]["errors"].get(outcome, 0)
                for k in keys
            ]
            positions = [i + (index - (len(outcomes) - 1) / 2) * width for i in range(len(keys))]
            ax.bar(positions, values, width, label=outcome, color=colours[outcome])
        ax.set_xticks(range(len(keys)), [labels[k] for k in keys], fontsize=8)
        ax.set_ylabel("calls")
        ax.set_title(f"host '{host}'", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    return figure


def _breaker(name: str, scenario: dict[str, Any], labels: dict[str, str]) -> Figure:
    keys = list(scenario["results"])
    figure, axes = _figure(len(keys), f"{name}: circuit breaker state, sampled")
    hosts = list(scenario["hosts"])
    colours = _colours(hosts)
    for ax, key in zip(axes, keys, strict=True):
        samples = scenario["results"][key]["breaker"]
        drawn = False
        for offset, host in enumerate(hosts):
            points = [
                (s["t"], _STATES.get(s["hosts"][host]["state"], 0))
                for s in samples
                if host in s["hosts"]
            ]
            if not points:
                continue
            drawn = True
            # Hosts a little apart, so lines on the same state stay visible.
            ax.step(
                [t for t, _ in points],
                [v + offset * 0.06 for _, v in points],
                where="post",
                color=colours[host],
                label=f"host '{host}'",
            )
        if not drawn:
            ax.text(
                0.5, 0.5, "no circuit breaker", ha="center", va="center", transform=ax.transAxes
            )
        else:
            ax.legend(fontsize=7, loc="upper right")
        _mark_outage(ax, scenario)
        ax.set_yticks([0, 1, 2], ["closed", "half-open", "open"])
        ax.set_ylim(-0.4, 2.6)
        ax.set_title(labels[key], fontsize=10)
        ax.set_xlabel("seconds into the run")
        ax.grid(True, alpha=0.3)
    return figure


def _load(name: str, scenario: dict[str, Any], labels: dict[str, str]) -> Figure:
    hosts = list(scenario["hosts"])
    figure, axes = _figure(len(hosts), f"{name}: offered calls/s (dashed) and upstream requests/s")
    colours = _colours(list(scenario["results"]))
    for ax, host in zip(axes, hosts, strict=True):
        for key, result in scenario["results"].items():
            window = result["timeline"]["window_s"]
            rows = result["timeline"]["hosts"][host]
            times = [r["t"] for r in rows]
            ax.plot(
                times,
                [r["calls"] / window for r in rows],
                "--",
                color=colours[key],
                linewidth=1.0,
                label=f"{labels[key]} calls",
            )
            ax.plot(
                times,
                [r["upstream_requests"] / window for r in rows],
                "-",
                color=colours[key],
                linewidth=1.4,
                label=f"{labels[key]} upstream",
            )
        _mark_outage(ax, scenario)
        ax.set_title(f"host '{host}'", fontsize=10)
        ax.set_xlabel("seconds into the run" + _after_load_note(scenario, host, labels))
        ax.set_ylabel("per second")
        ax.legend(fontsize=7, ncols=2)
        ax.grid(True, alpha=0.3)
    return figure


def _after_load_note(scenario: dict[str, Any], host: str, labels: dict[str, str]) -> str:
    """Requests the host received after the load ended, in words: they are not load."""
    counts = {
        labels[key]: result["timeline"]["after_load"][host]["upstream_requests"]
        for key, result in scenario["results"].items()
    }
    if not any(counts.values()):
        return ""
    listed = ", ".join(f"{label} {count}" for label, count in counts.items())
    return f"\nupstream requests after the load ended, not drawn: {listed}"


def _mark_outage(ax: Axes, scenario: dict[str, Any]) -> None:
    for outage in scenario.get("outages_s", []):
        ax.axvspan(outage["start"], outage["end"], color="#d62728", alpha=0.08)


_DRAW = {"latency": _latency, "errors": _errors, "breaker": _breaker, "load": _load}


def _sweep(report: dict[str, Any], labels: dict[str, str]) -> Figure:
    rows = report["sweep"]
    keys = [key for key in labels if any(key in row["clients"] for row in rows)]
    figure, (rate, tail) = _figure(2, "concurrency sweep: a healthy 2 ms host, closed loop")
    colours = _colours(keys)
    levels = [row["concurrency"] for row in rows]
    for key in keys:
        entries = [row["clients"].get(key, {}) for row in rows]
        for ax, field in ((rate, "ok_per_s"), (tail, "p99_ms")):
            points = [(n, e[field]) for n, e in zip(levels, entries, strict=True) if e.get(field)]
            ax.plot(
                [n for n, _ in points],
                [v for _, v in points],
                "o-",
                color=colours[key],
                label=labels[key],
            )
    for ax, ylabel in ((rate, "successful calls/s"), (tail, "p99 ms")):
        ax.set_xscale("log")
        ax.set_xticks(levels, [str(n) for n in levels])
        ax.set_xlabel("callers in flight")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    tail.set_yscale("log")
    return figure


def plot_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the PNG files of every scenario in ``report`` to ``out_dir``; their paths."""
    labels = {key: client["label"] for key, client in report["clients"].items()}
    written = []
    for name, scenario in report["scenarios"].items():
        if "concurrency" in scenario:
            continue  # a level of the sweep: drawn together, below
        for kind in PLOTS:
            figure = _DRAW[kind](name, scenario, labels)
            path = out_dir / f"{name}-{kind}.png"
            figure.savefig(path, dpi=90)
            written.append(path)
    if report.get("sweep"):
        path = out_dir / "sweep.png"
        _sweep(report, labels).savefig(path, dpi=90)
        written.append(path)
    return written
