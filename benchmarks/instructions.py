"""Client instructions per request, resilient_client against bare httpx: a deterministic count.

Timings on a shared machine move by tens of percent; instruction counts do
not. Each client runs under ``valgrind --tool=callgrind`` twice, sending
``--small`` and then ``--large`` requests to the embedded upstream (its own
process, not counted); the difference between the two runs, divided by the
difference in requests, is the cost of one request without the start-up.

Five clients, each counted in the same run:

- ``bare``: httpx as it comes.
- ``bare-same-cookies``: httpx with resilient_client's cookie store
  (``_cookies.py``: a response that sets no cookie is not handed to the jar), so
  that against it only the resilience layers differ.
- ``bare-same-wire``: the same, with the two headers resilient_client adds to
  every request by default (a request id and the time left) as client headers,
  so the request on the wire is the same too.
- ``resilient``: resilient_client's defaults.
- ``resilient-no-propagation``: the same with both headers switched off (what
  issue 2's client sent).

The ratios: what switching costs (``resilient-no-propagation`` and
``resilient`` against ``bare``), and what the layers alone cost
(``resilient-no-propagation`` against ``bare-same-cookies``, ``resilient``
against ``bare-same-wire``).

What made earlier counts at concurrency 10 move by 15% between runs was not
the clients' code but httpcore's pool. A request can be handed a connection
that another request has just been handed too (the second one is told the
connection is not available, and opens a new one), and the pool scans all of
its connections on every request and every response, so one run ends with 10
connections and the next with 12, and every request after that costs more. A
run is therefore repeated (up to ``--tries`` times) until the client opened
exactly ``--concurrency`` connections, and the report says how many were
discarded; the hash seed is fixed, so that dictionary layouts are the same
in every run. What is left moves by well under 1%.

Two more things would move the count without saying anything about the
clients. Every client first runs once outside valgrind, so that no counted
run compiles the modules it imports (a run that writes the bytecode cache
costs millions of instructions more than the next). And after warming up, each
run freezes its start-up heap (``gc.freeze()``): a full collection walks every
object the imports made, resilient_client's imports (pydantic, OpenTelemetry)
make more of them than httpx's, and one such collection more or less in a run
moves a 400-request difference by several percent. In a service those objects
are a small part of a much larger heap, which every client shares. The
collections of what each request allocates are still counted.

Needs valgrind (``apt-get install valgrind``). One round of the five clients
at concurrency 10 takes about 12 minutes, since valgrind runs Python about 50
times slower.

    python benchmarks/instructions.py [--small 100] [--large 500] [--concurrency 10]
                                      [--rounds 3] [--tries 4]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import resilient_client as rc
from resilient_client._cookies import ResponseCookies
from resilient_client.testing._upstream import UpstreamProcess

KINDS = (
    "bare",
    "bare-same-cookies",
    "bare-same-wire",
    "resilient",
    "resilient-no-propagation",
)

# What resilient_client adds to every request by default (docs/telemetry.md),
# with values of the same length as the ones it sends here: a 32-digit request
# id, and the milliseconds left of a 120 s budget.
SAME_WIRE_HEADERS = {
    "X-Request-ID": "0123456789abcdef0123456789abcdef",
    "X-Request-Timeout-Ms": "120000",
}
NO_PROPAGATION = {"telemetry": {"deadline_header": None, "request_id_header": None}}


def _client(kind: str) -> httpx.AsyncClient:
    # Generous timeouts: under valgrind everything is ~50x slower, and a timeout
    # would change the code path being counted.
    if kind == "bare":
        return httpx.AsyncClient(trust_env=False, timeout=120)
    if kind in ("bare-same-cookies", "bare-same-wire"):
        headers = SAME_WIRE_HEADERS if kind == "bare-same-wire" else None
        client = httpx.AsyncClient(trust_env=False, timeout=120, headers=headers)
        # httpx's own setter would wrap any store in httpx.Cookies again.
        client._cookies = ResponseCookies(client.cookies.jar)
        return client
    if kind == "resilient":
        return rc.AsyncClient(trust_env=False, timeout=120)
    if kind == "resilient-no-propagation":
        return rc.AsyncClient(trust_env=False, timeout=120, settings=NO_PROPAGATION)
    raise ValueError(f"unknown client {kind!r}")


async def _client_run(kind: str, requests: int, port: int, concurrency: int) -> None:
    """What runs under valgrind: warm up, then ``requests`` requests at ``concurrency``."""
    url = f"http://127.0.0.1:{port}/"
    loop = asyncio.get_running_loop()
    connections = 0
    open_connection = loop.create_connection

    # Counted where anyio (httpcore's backend) opens every TCP connection.
    async def counting_create_connection(*args: Any, **kwargs: Any) -> Any:
        nonlocal connections
        connections += 1
        return await open_connection(*args, **kwargs)

    loop.create_connection = counting_create_connection  # type: ignore[method-assign]
    async with _client(kind) as client:
        await asyncio.gather(*(client.get(url) for _ in range(concurrency)))
        gc.collect()
        gc.freeze()

        async def worker() -> None:
            for _ in range(requests // concurrency):
                response = await client.get(url)
                if response.status_code != 200:
                    raise RuntimeError(f"upstream answered {response.status_code}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    print(f"connections: {connections}")


@dataclass
class Count:
    instructions: int
    connections: int


def _count(kind: str, requests: int, port: int, concurrency: int, *, counted: bool = True) -> Count:
    """Run the client under valgrind (or, ``counted=False``, without: a warm-up)."""
    with tempfile.TemporaryDirectory() as scratch:
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={Path(scratch) / 'out'}"]
        result = subprocess.run(
            [
                *(valgrind if counted else []),
                sys.executable,
                __file__,
                "--client-run",
                kind,
                str(requests),
                str(port),
                str(concurrency),
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            env={
                # Deadlines would fire under valgrind's slowdown; they are not what is counted.
                "RESILIENT_CLIENT_DEFAULT__TIMEOUT__TOTAL": "600",
                "RESILIENT_CLIENT_DEFAULT__TIMEOUT__ATTEMPT": "300",
                # The same dictionary layouts in every run.
                "PYTHONHASHSEED": "0",
                "PATH": "/usr/bin:/bin",
                # Passed on: another checkout to measure (PYTHONPATH=../old), and
                # telemetry settings to compare (RESILIENT_CLIENT_TELEMETRY='{...}').
                **{
                    name: os.environ[name]
                    for name in ("PYTHONPATH", "RESILIENT_CLIENT_TELEMETRY")
                    if name in os.environ
                },
            },
        )
    found = re.search(r"Collected : (\d+)", result.stderr)
    opened = re.search(r"connections: (\d+)", result.stdout)
    if result.returncode != 0 or opened is None or (counted and found is None):
        raise RuntimeError(f"the {kind} run failed:\n{result.stderr[-2000:]}")
    return Count(int(found.group(1)) if found else 0, int(opened.group(1)))


@dataclass
class Tally:
    """Per client: instructions per request in each round, and the runs discarded."""

    per_request: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    discarded: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    unsettled: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


async def _settled_count(
    kind: str, requests: int, port: int, concurrency: int, tries: int, tally: Tally
) -> int:
    """A run's count, repeated until the client opened ``concurrency`` connections."""
    for attempt in range(tries):
        count = await asyncio.to_thread(_count, kind, requests, port, concurrency)
        if count.connections == concurrency:
            return count.instructions
        if attempt < tries - 1:
            tally.discarded[kind] += 1
    tally.unsettled[kind] += 1  # kept, and reported: the last run opened more
    return count.instructions


def _rotations(rounds: int) -> Iterator[tuple[int, tuple[str, ...]]]:
    # Each round starts with the next client, so no client always runs first.
    for index in range(rounds):
        shift = index % len(KINDS)
        yield index, KINDS[shift:] + KINDS[:shift]


async def _measure(small: int, large: int, concurrency: int, rounds: int, tries: int) -> Tally:
    tally = Tally()
    async with UpstreamProcess(ports=1) as upstream:
        port = upstream.ports[0]
        for kind in KINDS:  # writes the bytecode cache before anything is counted
            await asyncio.to_thread(_count, kind, concurrency, port, concurrency, counted=False)
        for index, order in _rotations(rounds):
            print(f"round {index + 1} of {rounds}")
            for kind in order:
                low = await _settled_count(kind, small, port, concurrency, tries, tally)
                high = await _settled_count(kind, large, port, concurrency, tries, tally)
                per_request = (high - low) / (large - small)
                tally.per_request[kind].append(per_request)
                print(f"  {kind:<26} {per_request / 1e6:6.3f} M instructions per request")
    return tally


def _report(tally: Tally) -> None:
    median = {kind: statistics.median(counts) for kind, counts in tally.per_request.items()}
    print("\nmedian instructions per request, and the runs discarded for extra connections")
    for kind in KINDS:
        counts = ", ".join(f"{count / 1e6:.3f}" for count in tally.per_request[kind])
        note = f"  ({tally.unsettled[kind]} kept with extra)" if tally.unsettled[kind] else ""
        print(
            f"  {kind:<26} {median[kind] / 1e6:6.3f} M   rounds: {counts}   "
            f"discarded: {tally.discarded[kind]}{note}"
        )
    pairs = [
        ("resilient-no-propagation", "bare", "switching, headers off"),
        ("resilient", "bare", "switching: the defaults, headers and all"),
        ("resilient-no-propagation", "bare-same-cookies", "the layers alone, headers off"),
        ("resilient", "bare-same-wire", "the layers alone, the same request on the wire"),
    ]
    print("\nratios, per round and of the medians")
    for ours, theirs, meaning in pairs:
        per_round = [
            a / b for a, b in zip(tally.per_request[ours], tally.per_request[theirs], strict=True)
        ]
        rounds = ", ".join(f"{ratio:.3f}" for ratio in per_round)
        print(
            f"  {ours} / {theirs}: {median[ours] / median[theirs]:.3f}"
            f"   rounds: {rounds}   ({meaning})"
        )


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--client-run"]:
        kind, requests, port, concurrency = arguments[1], *map(int, arguments[2:5])
        asyncio.run(_client_run(kind, requests, port, concurrency))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=100, help="requests in the short run")
    parser.add_argument("--large", type=int, default=500, help="requests in the long run")
    parser.add_argument("--concurrency", type=int, default=10, help="requests in flight (10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the five clients")
    parser.add_argument(
        "--tries", type=int, default=4, help="runs per count until no extra connection (4)"
    )
    args = parser.parse_args(arguments)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    tally = asyncio.run(_measure(args.small, args.large, args.concurrency, args.rounds, args.tries))
    _report(tally)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
