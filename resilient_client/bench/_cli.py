"""The ``resilient-client`` command line (also ``python -m resilient_client``).

Two commands: ``bench`` runs load scenarios against a fault-injecting upstream
and ``demo`` is a short name for one of them (the slow-dependency scenario,
bare httpx against the library's defaults). ``_add_<name>`` declares a
command's parser and binds its runner with ``set_defaults(run=...)``; the
runner takes the parsed arguments and returns the exit code. The runner is
:mod:`._command`'s; the bench's work is done by its own modules (:mod:`._runner`,
:mod:`._report`, :mod:`._plots`); rich and matplotlib are imported only when a
command runs, so ``--help`` works without the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ._clients import CLIENTS
from ._command import BENCH_EXTRA, DEMO_SECONDS, EXIT_FAILED, PROG, run_bench_command
from ._scenarios import SCENARIOS, SWEEP_LEVELS, SWEEP_MAX_LEVEL, SWEEP_SECONDS

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "build_parser", "main"]

Runner = Callable[[argparse.Namespace], int]
if TYPE_CHECKING:
    # Generic only in the type stubs; subscripting it at run time fails.
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

# Exit code on Ctrl-C (EXIT_FAILED, 1: the bench could not run; argparse's 2: a bad command line).
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


# -- bench and demo -------------------------------------------------------------------------------

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
  sweep            not part of 'all': 1, 10, 50, 100 and 200 callers (--concurrency) in a
                   closed loop on a healthy 2 ms host, {SWEEP_SECONDS:g} s each in alternating
                   segments: successful calls/s, errors and p99 per client, and the ratio

With no options it runs a short tour (under a minute): healthy, slow-dependency and outage,
shortened, bare httpx against the defaults. After the scenarios' tables comes the "do no
harm" table: per scenario and host, each resilient client's successful calls and p99 beside
bare httpx's, with a verdict. Writes bench.json (every figure) and four PNG plots per
scenario to --out: latency percentiles over time, calls by outcome, breaker state over
time, offered load against upstream load (the sweep: one, sweep.png). Needs the 'bench'
extra: {BENCH_EXTRA}.
docs/tuning.md explains how to read the report and choose settings from it."""

_BENCH_EPILOG = f"""\
examples:
  {PROG} bench
  {PROG} bench --scenario all --out results/
  {PROG} bench --scenario outage --settings resilience.toml --dependency payments
  {PROG} bench --scenario healthy --load closed --workers 20 --duration 30
  {PROG} bench --scenario sweep --concurrency 1,10,50,100,200 --clients httpx,defaults

exit status: 0 when the bench ran (a client whose calls outlived --grace is a finding: its
run is marked cut short), 1 when it could not run (invalid settings, the upstream did not
start, missing extras) or --strict and a run was cut short, 2 for a bad command line."""


_DEMO = DEMO_SECONDS
_DEMO_DESCRIPTION = f"""\
Show what one slow dependency does to a healthy one: the bench's slow-dependency scenario,
shortened to {_DEMO:g} s, bare httpx against resilient_client's defaults. The same as

  {PROG} bench --scenario slow-dependency --clients httpx,defaults --duration {_DEMO:g} --grace 5

and it takes the bench's options (see '{PROG} bench --help'). A host answering after 2 s
takes every connection of httpx's one shared pool, so the healthy host's calls queue behind it;
resilient_client gives each host a pool and a bulkhead of its own. Needs the 'bench' extra:
{BENCH_EXTRA}."""

_DEMO_EPILOG = f"""\
examples:
  {PROG} demo
  {PROG} demo --duration 10 --out demo-results/ --no-plots"""


def _scenario_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names in (["all"], ["tour"]):
        return names
    unknown = [name for name in names if name not in SCENARIOS and name != "sweep"]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: choose 'all', 'tour' or scenarios from {', '.join(SCENARIOS)}, sweep"
        )
    return names


def _levels(text: str) -> tuple[int, ...]:
    parse = _int_in(1, SWEEP_MAX_LEVEL)
    levels = tuple(parse(part.strip()) for part in text.split(",") if part.strip())
    if not levels or len(set(levels)) != len(levels) or len(levels) > _MAX_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: 1 to {_MAX_LEVELS} distinct numbers of callers, comma-separated"
        )
    return levels


_MAX_LEVELS = 10


def _client_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CLIENTS]
    if unknown or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a comma-separated list of distinct clients from {', '.join(CLIENTS)}"
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
        "comma-separated ('sweep': the concurrency sweep)",
    )
    parser.add_argument(
        "--concurrency",
        type=_levels,
        default=None,
        metavar="LIST",
        help="the sweep's levels, callers in flight, comma-separated, each 1-"
        f"{SWEEP_MAX_LEVEL} (default: {','.join(map(str, SWEEP_LEVELS))}); runs the sweep "
        "(after the scenarios given, if any)",
    )
    _add_client_options(parser)
    _add_load_options(parser, duration="each scenario's own, 10-30 s; the tour's, 3-8 s")
    _add_output_options(parser)
    parser.set_defaults(run=run_bench_command, command="bench", parser=parser, hint="")


def _add_demo(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a slow dependency starving a healthy one: httpx vs resilient_client, side by "
        "side (the bench's slow-dependency scenario, short)",
        description=_DEMO_DESCRIPTION,
        epilog=_DEMO_EPILOG,
        formatter_class=_formatter,
    )
    _add_client_options(parser)
    _add_load_options(parser, duration=f"{_DEMO:g}")
    _add_output_options(parser)
    # Its options before it became a bench scenario (--slow-callers, --json, ...) are gone.
    hint = f"; demo takes the bench's options now (see '{PROG} demo --help')"
    parser.set_defaults(
        run=run_bench_command, command="demo", scenario=None, parser=parser, hint=hint
    )


def _add_client_options(parser: argparse.ArgumentParser) -> None:
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
        f"{', '.join(CLIENTS)} (default: httpx,hand-written,defaults and settings "
        "with --settings; the tour leaves out hand-written)",
    )


def _add_load_options(parser: argparse.ArgumentParser, *, duration: str) -> None:
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
        f"scale with it (default: {duration})",
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


def _add_output_options(parser: argparse.ArgumentParser) -> None:
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
    args, unknown = parser.parse_known_args(argv)
    run: Runner | None = getattr(args, "run", None)
    if run is None:
        parser.error(f"give a command, e.g. '{PROG} bench' (see '{PROG} --help')")
    if unknown:
        # Said by the command's own parser, so the usage shown is the command's.
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}{args.hint}")
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
