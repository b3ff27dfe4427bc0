"""What ``resilient-client bench`` (and ``demo``) does once its command line is parsed.

The settings and the plan (which scenarios, with which options, for which
clients), the run under a progress bar, the report printed and written, and
the exit code. The parser is :mod:`._cli`'s; rich and matplotlib are imported
only here, when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .. import ResilienceSettings, SettingsError
from .._settings import load_settings
from ._clients import ClientSpec, client_specs
from ._report import build_report, options_of, report_json
from ._runner import ScenarioResult, run_bench
from ._scenarios import SCENARIOS, SWEEP_LEVELS, TOUR, BenchOptions, Scenario, sweep_scenarios
from ._terminal import print_summary

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = ["BENCH_EXTRA", "DEMO_SECONDS", "EXIT_FAILED", "PROG", "run_bench_command"]

PROG = "resilient-client"
BENCH_EXTRA = "pip install 'resilient-client[bench]'"
# The demo's length: the tour's slow-dependency run.
DEMO_SECONDS = dict(TOUR)["slow-dependency"]
# Exit code when the bench could not run (argparse exits 2 for a bad command line).
EXIT_FAILED = 1

Plan = list[tuple[Scenario, BenchOptions]]


def _bench_extras() -> str | None:
    """None when rich and matplotlib import; else what is missing."""
    missing = []
    for module in ("rich", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    return ", ".join(missing) or None


def _bench_settings(args: argparse.Namespace) -> ResilienceSettings | None:
    """The settings the 'settings' client runs with; SettingsError/ValueError when unusable."""
    if args.settings is None:
        if args.dependency is not None:
            raise ValueError("--dependency needs --settings FILE")
        return None
    settings = load_settings(args.settings)
    if args.dependency is None:
        return settings
    if args.dependency not in settings.dependencies:
        known = ", ".join(sorted(settings.dependencies)) or "none"
        raise ValueError(
            f"settings file {str(args.settings)!r} names no dependency {args.dependency!r} "
            f"(it names: {known})"
        )
    # The scenario's hosts are 127.0.0.1 ports, which the dependency's host patterns never
    # match: give its effective policy to every host instead.
    policy = settings.policy_for(args.dependency)
    return ResilienceSettings.from_mapping({"default": policy.model_dump()})


def _options(args: argparse.Namespace, **changes: float) -> BenchOptions:
    values = {
        "load": args.load,
        "duration": args.duration,
        "rate": args.rate,
        "workers": args.workers,
        "seed": args.seed,
        "grace": args.grace,
        "max_calls": args.max_calls,
    }
    return BenchOptions(**{**values, **changes})


def _bench_plan(args: argparse.Namespace) -> tuple[Plan, list[str]]:
    """The scenarios to run with their options, and the keys of the clients to compare."""
    levels: tuple[int, ...] | None = getattr(args, "concurrency", None)
    names: list[str] = [] if args.scenario is None else list(args.scenario)
    if "sweep" in names or levels is not None:
        names = [name for name in names if name != "sweep"]
        levels = levels or SWEEP_LEVELS
    if args.command == "demo":
        short: Sequence[tuple[str, float]] | None = [("slow-dependency", DEMO_SECONDS)]
    else:
        short = TOUR if names in ([], ["tour"]) and levels is None else None
    if short is None:
        names = list(SCENARIOS) if names == ["all"] else names
        plan = [(SCENARIOS[name], _options(args)) for name in names]
        # The sweep's levels run in a closed loop, whatever --load and --workers say.
        sweep = sweep_scenarios(levels) if levels else []
        plan += [(level, _options(args).for_scenario(level)) for level in sweep]
    else:
        # Short runs and a short grace: the whole tour stays under a minute.
        plan = [
            (
                SCENARIOS[name],
                _options(args, duration=args.duration or seconds, grace=min(args.grace, 5.0)),
            )
            for name, seconds in short
        ]
    if args.clients is not None:
        clients = list(args.clients)
    else:
        # The tour and the sweep compare bare httpx with the defaults.
        brief = short or not names
        clients = ["httpx", "defaults"] if brief else ["httpx", "hand-written", "defaults"]
        if args.settings is not None:
            clients.append("settings")
    return plan, clients


class _RichProgress:
    """The engine's progress events on a rich progress bar, one line per client run."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def started(self, scenario: str, client: str, seconds: float) -> None:
        self._task = self._progress.add_task(f"{scenario}: {client}", total=seconds)

    def advanced(self, seconds: float) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=seconds)

    def finished(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[self._task]
            self._progress.update(self._task, completed=task.total)
        self._task = None


@contextmanager
def _library_logs_quiet() -> Iterator[None]:
    """The library's warnings (breaker opening, calls rejected) would bury the progress bar.

    Only when nothing handles them already: an application's logging setup wins.
    """
    logger = logging.getLogger("resilient_client")
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def run_bench_command(args: argparse.Namespace) -> int:
    command = args.command
    missing = _bench_extras()
    if missing is not None:
        return _fail(command, f"needs {missing}, which it could not import: {BENCH_EXTRA}")
    try:
        settings = _bench_settings(args)
    except (SettingsError, ValueError) as exc:
        return _fail(command, str(exc))
    plan, clients = _bench_plan(args)
    if "settings" in clients and settings is None:
        return _fail(command, "the 'settings' client needs --settings FILE")

    from rich.console import Console

    specs = client_specs(clients, settings)
    started = time.perf_counter()
    try:
        with _library_logs_quiet():
            results = asyncio.run(_bench_with_progress(plan, specs, Console(stderr=True)))
    except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
        # Starting the upstream or closing a client failed: nothing to report but the cause.
        return _fail(command, f"{type(exc).__name__}: {exc}")
    report = build_report(
        results,
        specs,
        options_of(
            plan[0][1],
            scenarios=[scenario.name for scenario, _ in plan],
            tour=command == "bench" and args.scenario in (None, ["tour"]),
            clients=clients,
            settings_file=None if args.settings is None else str(args.settings),
            dependency=args.dependency,
        ),
    )
    print_summary(report, Console())
    try:
        written = _write(report, args.out, plots=not args.no_plots)
    except OSError as exc:
        return _fail(command, f"cannot write to {str(args.out)!r}: {exc}")
    files = f"{len(written)} file{'' if len(written) == 1 else 's'}"
    _progress(f"done in {time.perf_counter() - started:.1f} s; wrote {files}")
    plots = "" if args.no_plots else f"; plots: {args.out}/<scenario>-<plot>.png"
    _progress(f"figures: {written[0]}{plots}")
    return _cut_short(results, strict=args.strict)


def _write(report: dict[str, object], out: Path, *, plots: bool) -> list[Path]:
    """bench.json (first) and, with ``plots``, the PNG plots in ``out``: the files written."""
    out.mkdir(exist_ok=True)
    figures = out / "bench.json"
    figures.write_text(report_json(report), encoding="utf-8")
    written = [figures]
    if plots:
        from ._plots import plot_report

        written += plot_report(report, out)
    return written


def _cut_short(results: Sequence[ScenarioResult], *, strict: bool) -> int:
    """Say which runs were cut short at their time limit; the exit code."""
    cut_short = [
        f"{result.scenario.name}/{run.spec.key}"
        for result in results
        for run in result.runs
        if run.cut_short
    ]
    if not cut_short:
        return 0
    _progress(
        f"note: calls outlived the time limit in {', '.join(cut_short)}; they are counted "
        "as unfinished"
    )
    return EXIT_FAILED if strict else 0


async def _bench_with_progress(
    plan: Plan, specs: Sequence[ClientSpec], console: Console
) -> list[ScenarioResult]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description:<48}"),
        BarColumn(),
        TextColumn("{task.completed:>5.1f}/{task.total:g} s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        return await run_bench(plan, specs, _RichProgress(bar))


# -- shared plumbing -------------------------------------------------------------------------------


def _progress(message: str) -> None:
    # Progress goes to stderr so that stdout holds only the report.
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _fail(command: str, message: str) -> int:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return EXIT_FAILED
