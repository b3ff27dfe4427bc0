"""What a full outage costs the dependency, and what an open breaker costs the caller.

1. Amplification: logical calls arrive at a fixed rate (open loop, as requests
   reach a service) at a dependency that answers every request with 503. The
   upstream counts what it receives; amplification = requests received per
   logical call. Compared side by side in one run:

   - naive retries: bare httpx with tenacity, 3 retries, exponential backoff
     (what services write by hand today): about 4.0;
   - resilient_client with default settings (retry budget and breaker);
   - resilient_client with the breaker switched off (the retry budget alone).

2. Fast-fail cost: client CPU per call for calls rejected by an open breaker,
   against CPU per call for successful requests to a healthy upstream, as a
   ratio (the open breaker must cost a small fraction of a real request).

    python benchmarks/outage.py [--rate 200] [--seconds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import tenacity

import resilient_client as rc
from resilient_client.testing._upstream import STATS_PATH, UpstreamProcess

Call = Callable[[], Coroutine[Any, Any, object]]


async def _received(url: str) -> dict[str, int]:
    async with httpx.AsyncClient(trust_env=False) as probe:
        stats: dict[str, int] = (await probe.get(url + STATS_PATH.lstrip("/"))).json()["received"]
        return stats


async def _open_loop(call: Call, rate: float, seconds: float) -> int:
    """Start one call every 1/rate s for ``seconds``; wait for all; return how many."""
    tasks: list[asyncio.Task[object]] = []
    start = time.perf_counter()
    count = int(rate * seconds)
    for index in range(count):
        await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(call()))
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), seconds + 60)
    return count


async def amplification(rate: float, seconds: float) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    async with UpstreamProcess(ports=3) as upstream:
        naive_retry = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(4),
            wait=tenacity.wait_exponential(multiplier=0.05, max=2),
            retry=tenacity.retry_if_result(lambda r: r.status_code >= 500),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        no_breaker = {
            "default": {
                "breaker": {
                    "consecutive_failures": None,
                    "failure_ratio": 1.0,
                    "minimum_calls": 10**9,
                }
            }
        }
        clients: list[tuple[str, httpx.AsyncClient, int, bool]] = [
            (
                "naive retries (httpx + tenacity, 3 retries)",
                httpx.AsyncClient(trust_env=False),
                0,
                True,
            ),
            ("resilient_client, defaults", rc.AsyncClient(trust_env=False), 1, False),
            (
                "resilient_client, breaker off (budget alone)",
                rc.AsyncClient(trust_env=False, settings=no_breaker),
                2,
                False,
            ),
        ]
        for name, client, port_index, naive in clients:
            url = upstream.url(port_index, "/?status=503")
            async with client:
                if naive:

                    async def call(client: httpx.AsyncClient = client, url: str = url) -> object:
                        return await naive_retry.copy()(client.get, url)
                else:

                    async def call(client: httpx.AsyncClient = client, url: str = url) -> object:
                        return await client.get(url)

                calls = await _open_loop(call, rate, seconds)
            received = (await _received(upstream.url(0)))[str(upstream.ports[port_index])]
            results[name] = {"calls": calls, "received": received, "per_call": received / calls}
            print(
                f"  {name:<46} {calls:6d} calls  {received:6d} received  "
                f"{received / calls:5.2f} per call"
            )
    return results


async def fast_fail_cost(calls: int) -> dict[str, float]:
    async with UpstreamProcess(ports=2) as upstream:
        opened = {
            "default": {
                "breaker": {"consecutive_failures": 1, "open_for": 3600},
                "retry": {"attempts": 1},
            }
        }
        async with rc.AsyncClient(trust_env=False, settings=opened) as client:
            await client.get(upstream.url(0, "/?status=500"))  # opens it for the hour
            healthy = upstream.url(1)
            for _ in range(100):
                await client.get(healthy)
            cpu = time.process_time()
            for _ in range(calls):
                await client.get(healthy)
            ok_cpu = (time.process_time() - cpu) / calls
            cpu = time.process_time()
            for _ in range(calls):
                with contextlib.suppress(rc.CircuitOpenError):
                    await client.get(upstream.url(0))
            open_cpu = (time.process_time() - cpu) / calls
    result = {
        "success_us": ok_cpu * 1e6,
        "open_breaker_us": open_cpu * 1e6,
        "ratio": open_cpu / ok_cpu,
    }
    print(
        f"  successful request {result['success_us']:8.1f} us CPU   open breaker "
        f"{result['open_breaker_us']:8.1f} us CPU   ratio {result['ratio']:.3f}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200, help="logical calls per second (200)")
    parser.add_argument("--seconds", type=float, default=3, help="length of the outage (3)")
    parser.add_argument("--calls", type=int, default=2000, help="calls for the fast-fail cost")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    print(
        f"full outage (every request answered 503), {args.rate:g} calls/s for {args.seconds:g} s:"
    )
    outage = asyncio.run(amplification(args.rate, args.seconds))
    print("open breaker against a successful request, client CPU per call:")
    fast_fail = asyncio.run(fast_fail_cost(args.calls))
    report: dict[str, Any] = {"amplification": outage, "fast_fail": fast_fail}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
