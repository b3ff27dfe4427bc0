"""Client instructions per request, resilient_client against bare httpx: a deterministic count.

Timings on a shared machine move by tens of percent; instruction counts move
far less. Each client runs under ``valgrind --tool=callgrind`` twice, sending
``--small`` and then ``--large`` requests to the embedded upstream (its own
process, not counted); the difference between the two runs, divided by the
difference in requests, is the cost of one request without the start-up.
Above concurrency 1, how many responses the event loop gathers per wake-up
depends on timing, and the count with it (two runs at concurrency 10 gave
ratios of 1.08 and 1.20); at concurrency 1 counts still move by about 3%
between runs, so compare several. Besides bare httpx as it comes, a bare
client sending the two headers resilient_client adds to every request (a
request id and the time left: httpx and h11 spend about 5% of a request on two
more headers) gives the layers' cost alone. Needs valgrind
(``apt-get install valgrind``); takes a few minutes, since valgrind runs
Python about 50 times slower.

    python benchmarks/instructions.py [--small 100] [--large 500] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

import resilient_client as rc
from resilient_client._upstream import UpstreamProcess

# bare: httpx as it comes. bare-same-wire: httpx sending the two headers
# resilient_client adds by default (request id, time left), so the request on the
# wire is the same and the difference is the layers' alone. resilient: the defaults.
KINDS = ("bare", "bare-same-wire", "resilient")


async def _client_run(kind: str, requests: int, port: int, concurrency: int) -> None:
    """What runs under valgrind: warm up, then ``requests`` requests at ``concurrency``."""
    factory = rc.AsyncClient if kind == "resilient" else httpx.AsyncClient
    url = f"http://127.0.0.1:{port}/"

    def headers() -> dict[str, str] | None:
        if kind != "bare-same-wire":
            return None
        # What resilient_client adds to every request by default (docs/telemetry.md),
        # so that both clients send the same request and only the layers differ.
        return {
            "X-Request-ID": f"{random.getrandbits(128):032x}",
            "X-Request-Timeout-Ms": "120000",
        }

    # Generous timeouts: under valgrind everything is ~50x slower, and a timeout
    # would change the code path being counted.
    async with factory(trust_env=False, timeout=120) as client:
        await asyncio.gather(*(client.get(url, headers=headers()) for _ in range(concurrency)))

        async def worker() -> None:
            for _ in range(requests // concurrency):
                response = await client.get(url, headers=headers())
                if response.status_code != 200:
                    raise RuntimeError(f"upstream answered {response.status_code}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def _count(kind: str, requests: int, port: int, concurrency: int) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={Path(scratch) / 'out'}",
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
    if result.returncode != 0 or found is None:
        raise RuntimeError(f"the {kind} run failed:\n{result.stderr[-2000:]}")
    return int(found.group(1))


async def _measure(small: int, large: int, concurrency: int) -> dict[str, float]:
    per_request: dict[str, float] = {}
    async with UpstreamProcess(ports=1) as upstream:
        port = upstream.ports[0]
        for kind in KINDS:
            low = await asyncio.to_thread(_count, kind, small, port, concurrency)
            high = await asyncio.to_thread(_count, kind, large, port, concurrency)
            per_request[kind] = (high - low) / (large - small)
            print(f"  {kind:<10} {per_request[kind] / 1e6:6.3f} M instructions per request")
    return per_request


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
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight (1)")
    args = parser.parse_args(arguments)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    per_request = asyncio.run(_measure(args.small, args.large, args.concurrency))
    resilient = per_request["resilient"]
    print(f"ratio resilient / bare: {resilient / per_request['bare']:.3f}")
    print(
        "ratio resilient / bare sending the same headers: "
        f"{resilient / per_request['bare-same-wire']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
