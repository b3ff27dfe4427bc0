"""The client-side cost of the resilience layers alone, side by side with bare httpx.

Both clients send to the same in-memory transport (a response with a one-chunk
body, after one trip through the event loop), so no network, server or
connection pool is measured: what differs is exactly what resilient_client
adds (routing, deadline, bulkhead, budget, rate limit, breaker, timeouts,
body guard). Rounds alternate between the clients; each client's figure is its
best round (the least disturbed by the rest of the machine), and the result is
the difference in microseconds of CPU per call, to set against the CPU a real
request costs (benchmarks/overhead.py).

    python benchmarks/layers.py [--rounds 15] [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator

import httpx

import resilient_client as rc


class _OneChunk(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"ok"


class _InMemory(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)  # one trip through the loop, as a real response takes
        return httpx.Response(200, stream=_OneChunk())


def _in_memory(dependency: str, limits: httpx.Limits, proxy: httpx.Proxy | None) -> _InMemory:
    return _InMemory()


async def _cpu_per_call(client: httpx.AsyncClient, calls: int, concurrency: int = 10) -> float:
    url = "http://inventory.internal/items"
    for _ in range(200):
        await client.get(url)

    async def worker() -> None:
        for _ in range(calls // concurrency):
            await client.get(url)

    start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - start) / calls * 1e6


async def run(rounds: int, calls: int) -> tuple[float, float]:
    bare: list[float] = []
    resilient: list[float] = []
    for index in range(rounds):
        for name in ("bare", "resilient") if index % 2 == 0 else ("resilient", "bare"):
            if name == "bare":
                async with httpx.AsyncClient(transport=_InMemory()) as client:
                    bare.append(await _cpu_per_call(client, calls))
            else:
                async with rc.AsyncClient(transport_factory=_in_memory) as resilient_client:
                    resilient.append(await _cpu_per_call(resilient_client, calls))
    return min(bare), min(resilient)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15, help="rounds per client (15)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per round (2000)")
    args = parser.parse_args(argv)
    bare, resilient = asyncio.run(run(args.rounds, args.calls))
    print(f"bare httpx        {bare:7.1f} us CPU per call (in-memory transport)")
    print(f"resilient_client  {resilient:7.1f} us CPU per call")
    print(f"the layers' cost  {resilient - bare:7.1f} us per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
