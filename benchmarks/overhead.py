"""Happy-path overhead of resilient_client against bare httpx, measured side by side.

Both clients send the same requests to the same local upstream (its own
process, so the client's CPU time is the client's alone), at concurrency 10,
in alternating rounds: round 1 bare then resilient, round 2 the other way
round, and so on. The machine is shared and noisy, so the result is a ratio
of medians over rounds, never an absolute time.

    python benchmarks/overhead.py [--rounds 9] [--requests 2000] [--json out.json]

Reports client CPU per request and wall-clock throughput for each client, and
the ratios resilient / bare (target: CPU per request within 1.05).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

import resilient_client as rc
from resilient_client._upstream import UpstreamProcess

ClientFactory = Callable[[], httpx.AsyncClient]

CLIENTS: dict[str, ClientFactory] = {
    "bare httpx": httpx.AsyncClient,
    "resilient_client": rc.AsyncClient,
}


@dataclass(frozen=True)
class Sample:
    client: str
    round: int
    cpu_us_per_request: float
    requests_per_second: float


async def _measure(
    factory: ClientFactory, url: str, requests: int, concurrency: int
) -> tuple[float, float]:
    async with factory() as client:
        # Warm up: open the connections and fill caches before measuring.
        await asyncio.gather(*(client.get(url) for _ in range(concurrency)))
        for _ in range(100):
            await client.get(url)
        per_worker = requests // concurrency

        async def worker() -> None:
            for _ in range(per_worker):
                response = await client.get(url)
                if response.status_code != 200:
                    raise RuntimeError(f"upstream answered {response.status_code}")

        cpu_start, wall_start = time.process_time(), time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), 120)
        cpu, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
    sent = per_worker * concurrency
    return cpu / sent * 1e6, sent / wall


async def run(rounds: int, requests: int, concurrency: int) -> list[Sample]:
    samples: list[Sample] = []
    async with UpstreamProcess(ports=1) as upstream:
        url = upstream.url(0)
        names = list(CLIENTS)
        for index in range(rounds):
            order = names if index % 2 == 0 else names[::-1]
            for name in order:
                cpu, rate = await _measure(CLIENTS[name], url, requests, concurrency)
                samples.append(Sample(name, index, cpu, rate))
                print(
                    f"  round {index + 1}/{rounds} {name:<17} "
                    f"{cpu:8.1f} us CPU/request  {rate:8.0f} req/s"
                )
    return samples


def summarise(samples: list[Sample]) -> dict[str, float]:
    def median(name: str, field: str) -> float:
        values: list[float] = [getattr(s, field) for s in samples if s.client == name]
        return statistics.median(values)

    bare, resilient = "bare httpx", "resilient_client"
    # Per-round ratios cancel out slow drifts of the shared machine.
    rounds = sorted({s.round for s in samples})
    by_round = {(s.client, s.round): s for s in samples}
    cpu_ratios = [
        by_round[(resilient, r)].cpu_us_per_request / by_round[(bare, r)].cpu_us_per_request
        for r in rounds
    ]
    return {
        "bare_cpu_us_per_request": median(bare, "cpu_us_per_request"),
        "resilient_cpu_us_per_request": median(resilient, "cpu_us_per_request"),
        "cpu_ratio_median_of_rounds": statistics.median(cpu_ratios),
        "bare_requests_per_second": median(bare, "requests_per_second"),
        "resilient_requests_per_second": median(resilient, "requests_per_second"),
        "throughput_ratio": median(resilient, "requests_per_second")
        / median(bare, "requests_per_second"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=9, help="alternating rounds per client (default 9)"
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per client per round (default 2000)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=10, help="requests in flight (default 10)"
    )
    parser.add_argument("--json", type=Path, help="also write every sample and the summary here")
    args = parser.parse_args(argv)
    print(
        f"happy-path overhead: {args.rounds} rounds x {args.requests} requests, "
        f"concurrency {args.concurrency}"
    )
    samples = asyncio.run(run(args.rounds, args.requests, args.concurrency))
    summary = summarise(samples)
    print()
    print(
        f"client CPU per request   bare httpx {summary['bare_cpu_us_per_request']:7.1f} us   "
        f"resilient_client {summary['resilient_cpu_us_per_request']:7.1f} us"
    )
    ratio = summary["cpu_ratio_median_of_rounds"]
    print(f"CPU ratio (median of per-round ratios): {ratio:.3f}  (target <= 1.05)")
    print(f"throughput ratio (median req/s):        {summary['throughput_ratio']:.3f}")
    if args.json:
        args.json.write_text(
            json.dumps({"samples": [asdict(s) for s in samples], "summary": summary}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
