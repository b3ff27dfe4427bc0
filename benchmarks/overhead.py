"""Happy-path overhead of resilient_client against bare httpx, measured side by side.

Both clients send the same requests to the same local upstream (its own
process, so the client's CPU time is the client's alone), at concurrency 10.
The machine is shared and noisy, and its speed changes from one second to
the next, so the two clients are measured in many short alternating segments
(A B, B A, A B, ...) with both clients open and warm throughout; each pair of
neighbouring segments gives one ratio, and the result is the median of those
ratios, never an absolute time.

    python benchmarks/overhead.py [--pairs 30] [--requests 500] [--json out.json]

Reports client CPU per request and wall-clock throughput for each client, and
the ratios resilient / bare (target: CPU per request within 1.05).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

import resilient_client as rc
from resilient_client.testing._upstream import UpstreamProcess

BARE, RESILIENT = "bare httpx", "resilient_client"


@dataclass(frozen=True)
class Segment:
    client: str
    pair: int
    cpu_us_per_request: float
    requests_per_second: float


async def measure_segment(
    client: httpx.AsyncClient, url: str, requests: int, concurrency: int
) -> tuple[float, float]:
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


async def run(pairs: int, requests: int, concurrency: int) -> list[Segment]:
    segments: list[Segment] = []
    async with (
        UpstreamProcess(ports=1) as upstream,
        httpx.AsyncClient(trust_env=False) as bare,
        rc.AsyncClient(trust_env=False) as resilient,
    ):
        url = upstream.url(0)
        clients = {BARE: bare, RESILIENT: resilient}
        for client in clients.values():  # warm up: connections open, caches filled
            await measure_segment(client, url, 500, concurrency)
        for pair in range(pairs):
            order = [BARE, RESILIENT] if pair % 2 == 0 else [RESILIENT, BARE]
            for name in order:
                cpu, rate = await measure_segment(clients[name], url, requests, concurrency)
                segments.append(Segment(name, pair, cpu, rate))
            done = segments[-2:]
            print(
                f"  pair {pair + 1:2d}/{pairs}  "
                + "  ".join(f"{s.client} {s.cpu_us_per_request:7.1f} us" for s in done)
            )
    return segments


def summarise(segments: list[Segment]) -> dict[str, float]:
    by_pair = {(s.client, s.pair): s for s in segments}
    pairs = sorted({s.pair for s in segments})

    def ratios(field: str) -> list[float]:
        return [
            getattr(by_pair[(RESILIENT, p)], field) / getattr(by_pair[(BARE, p)], field)
            for p in pairs
        ]

    def median(name: str, field: str) -> float:
        values: list[float] = [getattr(s, field) for s in segments if s.client == name]
        return statistics.median(values)

    cpu_ratios = sorted(ratios("cpu_us_per_request"))
    quartiles = statistics.quantiles(cpu_ratios, n=4)
    return {
        "bare_cpu_us_per_request": median(BARE, "cpu_us_per_request"),
        "resilient_cpu_us_per_request": median(RESILIENT, "cpu_us_per_request"),
        "cpu_ratio_median": statistics.median(cpu_ratios),
        "cpu_ratio_q1": quartiles[0],
        "cpu_ratio_q3": quartiles[2],
        "throughput_ratio_median": statistics.median(ratios("requests_per_second")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=30, help="alternating pairs (default 30)")
    parser.add_argument(
        "--requests", type=int, default=500, help="requests per segment (default 500)"
    )
    parser.add_argument("--concurrency", type=int, default=10, help="requests in flight (10)")
    parser.add_argument("--json", type=Path, help="also write every segment and the summary here")
    args = parser.parse_args(argv)
    print(
        f"happy-path overhead: {args.pairs} pairs of {args.requests}-request segments, "
        f"concurrency {args.concurrency}"
    )
    segments = asyncio.run(run(args.pairs, args.requests, args.concurrency))
    summary = summarise(segments)
    print()
    print(
        f"client CPU per request (medians)  bare httpx {summary['bare_cpu_us_per_request']:7.1f} us"
        f"   resilient_client {summary['resilient_cpu_us_per_request']:7.1f} us"
    )
    print(
        f"CPU ratio, median of pairs: {summary['cpu_ratio_median']:.3f} "
        f"(quartiles {summary['cpu_ratio_q1']:.3f}-{summary['cpu_ratio_q3']:.3f}; "
        "target <= 1.05)"
    )
    print(f"throughput ratio, median of pairs: {summary['throughput_ratio_median']:.3f}")
    if args.json:
        report = {"segments": [asdict(s) for s in segments], "summary": summary}
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
