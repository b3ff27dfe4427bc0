"""The ``resilient-client`` command line (also ``python -m resilient_client``).

One subcommand per tool. Each has two functions here: ``_add_<name>`` declares
its parser and binds its runner with ``set_defaults(run=...)``, and
``_run_<name>`` takes the parsed arguments and returns the exit code. A new
command is one more pair and one more entry in ``_COMMANDS``; what a command
does lives in a module of its own (``_demo.py``; ``_bench.py``, ``_report.py``
and ``_plots.py``), imported only when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__

__all__ = ["build_parser", "main"]

PROG = "resilient-client"

Runner = Callable[[argparse.Namespace], int]
if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from ._bench import BenchOptions, ClientSpec, Scenario
    from ._settings import ResilienceSettings

    # Generic only in the type stubs; subscripting it at run time fails.
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

# Exit codes, beyond 0 and argparse's 2 for a bad command line.
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _formatter(prog: str) -> argparse.HelpFormatter:
    # Descriptions and epilogs are laid out by hand; keep their line breaks.
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=30, width=100)


# -- argument types: each rejects a bad value with a message that says what is allowed --------


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def _seconds_up_to(high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        # "not (0 < value <= high)" also rejects nan.
        if not 0 < value <= high:
            raise argparse.ArgumentTypeError(f"{text} s is not more than 0 and at most {high:g}")
        return value

    return parse


def _output_file(text: str) -> Path:
    # Checked before the demo runs, so a typo does not cost a whole run.
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {str(path.parent)!r} does not exist")
    return path


# -- demo -----------------------------------------------------------------------------------------

_DEMO_DESCRIPTION = """\
Show what one slow dependency does to a healthy one, with bare httpx and with resilient_client.

Starts a local upstream (a child process on 127.0.0.1) with a slow host and a healthy host, then
runs the same scenario twice, once with httpx.AsyncClient() and once with
resilient_client.AsyncClient(), both with their defaults:

  1. --slow-callers callers each send one request to the slow host, which answers after
     --slow-delay seconds;
  2. a quarter of a second later, --healthy-callers callers send requests to the healthy host,
     one after another with --think-time between, for --duration seconds (and
     --max-healthy-requests in all at most).

Prints a side-by-side table: for the healthy host, requests, errors by type and p50/p99/max
latency; for the slow host, how many calls succeeded, failed fast with BulkheadFullError or
failed otherwise. Every run is bounded by a time limit, so the demo always ends."""

_DEMO_EPILOG = f"""\
examples:
  {PROG} demo
  {PROG} demo --slow-callers 500 --duration 5 --json demo.json

exit status: 0 when both runs completed, 1 when one hit its time limit or failed, 2 for a bad
command line."""


def _add_demo(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a slow dependency starving a healthy one: httpx vs resilient_client, side by side",
        description=_DEMO_DESCRIPTION,
        epilog=_DEMO_EPILOG,
        formatter_class=_formatter,
    )
    parser.add_argument(
        "--slow-callers",
        type=_int_in(0, 5000),
        default=200,
        metavar="N",
        help="callers that each send one request to the slow host, 0-5000 (default: %(default)s)",
    )
    parser.add_argument(
        "--healthy-callers",
        type=_int_in(1, 500),
        default=10,
        metavar="N",
        help="callers looping on the healthy host, 1-500 (default: %(default)s)",
    )
    parser.add_argument(
        "--duration",
        type=_seconds_up_to(60),
        default=3.0,
        metavar="SECONDS",
        help="how long the healthy callers keep sending, at most 60 (default: %(default)s)",
    )
    parser.add_argument(
        "--think-time",
        type=_seconds_up_to(10),
        default=0.02,
        metavar="SECONDS",
        help="pause between one healthy caller's requests, at most 10 (default: %(default)s)",
    )
    parser.add_argument(
        "--slow-delay",
        type=_seconds_up_to(30),
        default=2.0,
        metavar="SECONDS",
        help="how long the slow host takes to answer, at most 30 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-healthy-requests",
        type=_int_in(1, 1_000_000),
        default=50_000,
        metavar="N",
        help="stop the healthy callers after this many requests in all, even before "
        "--duration is up (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        type=_output_file,
        metavar="PATH",
        help="also write every figure (per client, per host, errors by type) to PATH as JSON",
    )
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ._demo import SlowDependencyScenario, format_report, report_json, run_demo

    scenario = SlowDependencyScenario(
        slow_callers=args.slow_callers,
        healthy_callers=args.healthy_callers,
        duration=args.duration,
        slow_delay=args.slow_delay,
        think_time=args.think_time,
        max_healthy_requests=args.max_healthy_requests,
    )
    started = time.perf_counter()
    try:
        report = asyncio.run(run_demo(scenario, progress=_progress))
    except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
        # Starting the upstream or closing a client failed: nothing to report but the cause.
        return _fail("demo", f"{type(exc).__name__}: {exc}")
    print(format_report(report))
    _progress(f"done in {time.perf_counter() - started:.1f} s")
    if args.json is not None:
        try:
            args.json.write_text(report_json(report), encoding="utf-8")
        except OSError as exc:
            return _fail("demo", f"cannot write {str(args.json)!r}: {exc}")
        _progress(f"figures written to {args.json}")
    return EXIT_FAILED if report.timed_out else 0


# -- bench ----------------------------------------------------------------------------------------

# Kept here rather than imported, so that '--help' needs neither the engine nor its extras.
_SCENARIO_NAMES = (
    "healthy",
    "slow-dependency",
    "outage",
    "flapping",
    "throttled",
    "degrading",
    "payments",
)
_CLIENT_NAMES = ("httpx", "hand-written", "defaults", "settings")
_BENCH_EXTRA = "pip install 'resilient-client[bench]'"

_BENCH_DESCRIPTION = f"""\
Load scenarios against a fault-injecting upstream (a child process on 127.0.0.1), the same
scenario once per client, side by side:

  httpx         bare httpx.AsyncClient(): one pool of 100 connections, 5 s timeouts, no retries
  hand-written  httpx + tenacity (3 retries) + pybreaker + asyncio.Semaphore(50) per host
  defaults      resilient_client.AsyncClient() with its default settings
  settings      resilient_client.AsyncClient(settings=--settings FILE), when a file is given

scenarios:
  healthy          a healthy 2 ms host: throughput, latency, client CPU per call (the overhead
                   ratio against bare httpx, measured in alternating segments in one run)
  slow-dependency  a host answering after 2 s beside a healthy one, through one client: the
                   healthy host's p99 and errors (isolation)
  outage           the host answers 503 from 25% to 55% of the run: upstream requests per call
                   (amplification, counted at the server) and time until calls succeed again
  flapping         30% of requests fail (503 or reset), 2% take 1 s: success ratio, p99
  throttled        the host admits 50 requests/s, beyond that 429 with Retry-After: 1
  degrading        the host slows from 10 ms to 300 ms and fails up to half its requests
  payments         a payments API with a p99 of about 300 ms that hangs for 10% of the run,
                   later answers 503 for 10% (the example of docs/tuning.md)

With no options it runs a short tour (under a minute): healthy, slow-dependency and outage,
shortened, bare httpx against the defaults. Writes bench.json (every figure) and four PNG plots
per scenario to --out: latency percentiles over time, calls by outcome, breaker state over
time, offered load against upstream load. Needs the 'bench' extra: {_BENCH_EXTRA}.
docs/tuning.md explains how to read the report and choose settings from it."""

_BENCH_EPILOG = f"""\
examples:
  {PROG} bench
  {PROG} bench --scenario all --out results/
  {PROG} bench --scenario outage --settings resilience.toml --dependency payments
  {PROG} bench --scenario healthy --load closed --workers 20 --duration 30

exit status: 0 when the bench ran (a client whose calls outlived --grace is a finding: its
run is marked cut short), 1 when it could not run (invalid settings, the upstream did not
start, missing extras) or --strict and a run was cut short, 2 for a bad command line."""


def _scenario_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names in (["all"], ["tour"]):
        return names
    unknown = [name for name in names if name not in _SCENARIO_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: choose 'all', 'tour' or scenarios from {', '.join(_SCENARIO_NAMES)}"
        )
    return names


def _client_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in _CLIENT_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a comma-separated list of distinct clients from {', '.join(_CLIENT_NAMES)}"
        )
    return names


def _out_dir(text: str) -> Path:
    # Checked before anything runs, so a typo does not cost a whole run.
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    if not path.exists() and not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {str(path.parent)!r} does not exist")
    return path


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 2000:
        raise argparse.ArgumentTypeError(f"{text} is not more than 0 and at most 2000")
    return value


def _add_bench(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="load scenarios (slow host, outage, flapping, throttled, ...): bare httpx, "
        "hand-written retries and resilient_client side by side, with a report and plots",
        description=_BENCH_DESCRIPTION,
        epilog=_BENCH_EPILOG,
        formatter_class=_formatter,
    )
    parser.add_argument(
        "--scenario",
        type=_scenario_list,
        default=None,
        metavar="NAME",
        help="'all', 'tour' (the default: a short tour of three) or one or more scenario names, "
        "comma-separated",
    )
    parser.add_argument(
        "--settings",
        type=Path,
        metavar="FILE",
        help="a resilience settings TOML file; adds the 'settings' client, which runs with it",
    )
    parser.add_argument(
        "--dependency",
        metavar="NAME",
        help="with --settings: give the scenario's hosts this named dependency's policy "
        "(default: the file's 'default' policy)",
    )
    parser.add_argument(
        "--clients",
        type=_client_list,
        metavar="LIST",
        help="the clients to compare, comma-separated, from "
        f"{', '.join(_CLIENT_NAMES)} (default: httpx,hand-written,defaults and settings "
        "with --settings; the tour leaves out hand-written)",
    )
    parser.add_argument(
        "--load",
        choices=("open", "closed"),
        default="open",
        help="open: calls arrive at a fixed mean rate whatever the client does (how traffic "
        "reaches a service); closed: N workers each call, pause, call again (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--duration",
        type=_seconds_up_to(600),
        metavar="SECONDS",
        help="load time of each scenario per client, at most 600; outage and degradation times "
        "scale with it (default: each scenario's own, 10-20 s)",
    )
    parser.add_argument(
        "--rate",
        type=_rate,
        metavar="PER_SECOND",
        help="open loop: calls per second of every stream, at most 2000 (default: each "
        "scenario's own, 50-200)",
    )
    parser.add_argument(
        "--workers",
        type=_int_in(1, 1000),
        metavar="N",
        help="closed loop: workers per stream, 1-1000 (default: each scenario's own)",
    )
    parser.add_argument(
        "--seed",
        type=_int_in(0, 2**31),
        default=1,
        metavar="N",
        help="seed of the upstream's faults and of the arrivals, so runs repeat in shape "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--grace",
        type=_seconds_up_to(120),
        default=10.0,
        metavar="SECONDS",
        help="after the load, how long calls still in flight may finish before they are "
        "cancelled and counted unfinished (default: %(default)s)",
    )
    parser.add_argument(
        "--max-calls",
        type=_int_in(1, 10_000_000),
        default=200_000,
        metavar="N",
        help="at most this many calls per client and scenario, whatever the rate and duration "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=_out_dir,
        default=Path("bench-results"),
        metavar="DIR",
        help="where bench.json and the PNG plots go; created if missing (default: %(default)s)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when any run was cut short at its time limit",
    )
    parser.add_argument(
        "--no-plots",
        action="store_true",
        help="write bench.json only, no PNG plots",
    )
    parser.set_defaults(run=_run_bench)


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
    from ._settings import ResilienceSettings, load_settings

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


def _bench_plan(
    args: argparse.Namespace,
) -> tuple[list[tuple[Scenario, BenchOptions]], list[str]]:
    from ._bench import SCENARIOS, TOUR, BenchOptions

    options = BenchOptions(
        load=args.load,
        duration=args.duration,
        rate=args.rate,
        workers=args.workers,
        seed=args.seed,
        grace=args.grace,
        max_calls=args.max_calls,
    )
    tour = args.scenario in (None, ["tour"])
    if tour:
        # Short runs and a short grace: the whole tour stays under a minute.
        plan = [
            (
                SCENARIOS[name],
                BenchOptions(
                    load=options.load,
                    duration=args.duration or seconds,
                    rate=args.rate,
                    workers=args.workers,
                    seed=args.seed,
                    grace=min(args.grace, 5.0),
                    max_calls=args.max_calls,
                ),
            )
            for name, seconds in TOUR
        ]
    else:
        names = list(SCENARIOS) if args.scenario == ["all"] else args.scenario
        plan = [(SCENARIOS[name], options) for name in names]
    if args.clients is not None:
        clients = list(args.clients)
    else:
        clients = ["httpx", "defaults"] if tour else ["httpx", "hand-written", "defaults"]
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


def _run_bench(args: argparse.Namespace) -> int:
    missing = _bench_extras()
    if missing is not None:
        return _fail("bench", f"needs {missing}, which it could not import: {_BENCH_EXTRA}")
    from ._exceptions import SettingsError

    try:
        settings = _bench_settings(args)
    except (SettingsError, ValueError) as exc:
        return _fail("bench", str(exc))
    plan, clients = _bench_plan(args)
    if "settings" in clients and settings is None:
        return _fail("bench", "the 'settings' client needs --settings FILE")

    from rich.console import Console

    from ._bench import client_specs
    from ._report import build_report, options_of, print_summary, report_json

    specs = client_specs(clients, settings)
    console, errors = Console(), Console(stderr=True)
    started = time.perf_counter()
    try:
        with _library_logs_quiet():
            results = asyncio.run(_bench_with_progress(plan, specs, errors))
    except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
        # Starting the upstream or closing a client failed: nothing to report but the cause.
        return _fail("bench", f"{type(exc).__name__}: {exc}")
    first = plan[0][1]
    report = build_report(
        results,
        specs,
        options_of(
            first,
            scenarios=[scenario.name for scenario, _ in plan],
            tour=args.scenario in (None, ["tour"]),
            clients=clients,
            settings_file=None if args.settings is None else str(args.settings),
            dependency=args.dependency,
        ),
    )
    print_summary(report, console)
    try:
        args.out.mkdir(exist_ok=True)
        figures = args.out / "bench.json"
        figures.write_text(report_json(report), encoding="utf-8")
        written = [figures]
        if not args.no_plots:
            from ._plots import plot_report

            written += plot_report(report, args.out)
    except OSError as exc:
        return _fail("bench", f"cannot write to {str(args.out)!r}: {exc}")
    _progress(f"done in {time.perf_counter() - started:.1f} s; wrote {len(written)} files")
    _progress(f"figures: {figures}; plots: {args.out}/<scenario>-<plot>.png")
    cut_short = [
        f"{result.scenario.name}/{run.spec.key}"
        for result in results
        for run in result.runs
        if run.cut_short
    ]
    if cut_short:
        _progress(
            f"note: calls outlived the time limit in {', '.join(cut_short)}; they are counted "
            "as unfinished"
        )
        if args.strict:
            return EXIT_FAILED
    return 0


async def _bench_with_progress(
    plan: list[tuple[Scenario, BenchOptions]], specs: list[ClientSpec], console: Console
) -> list[Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ._bench import run_scenario

    columns = (
        TextColumn("{task.description:<48}"),
        BarColumn(),
        TextColumn("{task.completed:>5.1f}/{task.total:g} s"),
        TimeElapsedColumn(),
    )
    results = []
    with Progress(*columns, console=console, transient=False) as bar:
        events = _RichProgress(bar)
        for scenario, options in plan:
            results.append(await run_scenario(scenario, specs, options, events))
    return results


# -- shared plumbing -------------------------------------------------------------------------------


def _progress(message: str) -> None:
    # Progress goes to stderr so that stdout holds only the report.
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _fail(command: str, message: str) -> int:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return EXIT_FAILED


_COMMANDS: tuple[Callable[[Subparsers], None], ...] = (_add_bench, _add_demo)

_DESCRIPTION = """\
Tools for resilient_client, a drop-in httpx.AsyncClient that gives every dependency (host:port)
its own connection pool, a bulkhead (bounded concurrency and queue, failing fast with
BulkheadFullError) and a deadline for the whole logical call (DeadlineExceededError).

Start with 'resilient-client bench': a short tour of what the library changes, side by side
with bare httpx."""

_EPILOG = f"""\
Run '{PROG} COMMAND --help' for a command's options.
'python -m resilient_client' is the same command line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        # Fixed, so 'python -m resilient_client' does not call itself '__main__.py'.
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in _COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line (``argv`` without the program name; default ``sys.argv[1:]``).

    Returns the exit code; ``--help``, ``--version`` and a bad command line exit
    through ``SystemExit``, as argparse does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Runner | None = getattr(args, "run", None)
    if run is None:
        parser.error(f"give a command, e.g. '{PROG} demo' (see '{PROG} --help')")
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
