"""The ``resilient-client`` command line (also ``python -m resilient_client``).

One subcommand per tool. Each has two functions here: ``_add_<name>`` declares
its parser and binds its runner with ``set_defaults(run=...)``, and
``_run_<name>`` takes the parsed arguments and returns the exit code. A new
command is one more pair and one more entry in ``_COMMANDS``; what a command
does lives in a module of its own (``_demo.py``), imported only when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__

__all__ = ["build_parser", "main"]

PROG = "resilient-client"

Runner = Callable[[argparse.Namespace], int]
if TYPE_CHECKING:
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


# -- shared plumbing -------------------------------------------------------------------------------


def _progress(message: str) -> None:
    # Progress goes to stderr so that stdout holds only the report.
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _fail(command: str, message: str) -> int:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return EXIT_FAILED


_COMMANDS: tuple[Callable[[Subparsers], None], ...] = (_add_demo,)

_DESCRIPTION = """\
Tools for resilient_client, a drop-in httpx.AsyncClient that gives every dependency (host:port)
its own connection pool, a bulkhead (bounded concurrency and queue, failing fast with
BulkheadFullError) and a deadline for the whole logical call (DeadlineExceededError)."""

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
