"""What tracing and metrics cost per request, as ratios against the untraced client.

Three resilient clients send the same requests to the same local upstream (its
own process) at concurrency 10, in short segments taken in rotation (A B C,
B C A, C A B, ...) so that each rotation sees the machine in the same mood:

- ``untraced``: ``telemetry.traces`` and ``telemetry.metrics`` off;
- ``no-op API``: the defaults with no OpenTelemetry SDK configured (what a
  service that only has opentelemetry-api installed runs);
- ``SDK``: the defaults with an SDK tracer provider (batch span processor, an
  exporter that drops the spans) and meter provider given to the client: a
  span per call, a CLIENT span per attempt, the metrics recorded.

Each rotation gives a ratio per client against ``untraced``; the result is the
median of those ratios (client CPU per request), never an absolute time. The
deadline and request-id headers are sent by all three: they are propagation,
not tracing.

    python benchmarks/telemetry.py [--rotations 20] [--requests 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from overhead import measure_segment  # the same segment, so the two measure alike

import resilient_client as rc
from resilient_client.testing._upstream import UpstreamProcess

UNTRACED, NOOP, SDK = "untraced", "no-op API", "SDK"


class _Dropping(SpanExporter):
    """Exports nowhere: what is measured is the client's work, not an exporter's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def run(rotations: int, requests: int, concurrency: int) -> dict[str, list[float]]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_Dropping()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    off = {"telemetry": {"traces": False, "metrics": False}}
    cpu: dict[str, list[float]] = {UNTRACED: [], NOOP: [], SDK: []}
    try:
        async with (
            UpstreamProcess(ports=1) as upstream,
            rc.AsyncClient(settings=off, trust_env=False) as untraced,
            rc.AsyncClient(trust_env=False) as noop,
            rc.AsyncClient(
                trust_env=False, tracer_provider=tracer_provider, meter_provider=meter_provider
            ) as sdk,
        ):
            url = upstream.url(0)
            clients = {UNTRACED: untraced, NOOP: noop, SDK: sdk}
            for client in clients.values():  # warm up: connections open, caches filled
                await measure_segment(client, url, 500, concurrency)
            names = list(clients)
            for rotation in range(rotations):
                shift = rotation % len(names)
                for name in names[shift:] + names[:shift]:
                    cpu_us, _ = await measure_segment(clients[name], url, requests, concurrency)
                    cpu[name].append(cpu_us)
                print(
                    f"  rotation {rotation + 1:2d}/{rotations}  "
                    + "  ".join(f"{name} {cpu[name][-1]:7.1f} us" for name in names)
                )
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
    return cpu


def summarise(cpu: dict[str, list[float]]) -> dict[str, float]:
    def ratio(name: str) -> list[float]:
        return sorted(a / b for a, b in zip(cpu[name], cpu[UNTRACED], strict=True))

    summary: dict[str, float] = {
        f"{name} cpu_us_per_request (median)": statistics.median(values)
        for name, values in cpu.items()
    }
    for name in (NOOP, SDK):
        ratios = ratio(name)
        quartiles = statistics.quantiles(ratios, n=4)
        summary[f"{name} / untraced (median)"] = statistics.median(ratios)
        summary[f"{name} / untraced (q1)"] = quartiles[0]
        summary[f"{name} / untraced (q3)"] = quartiles[2]
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rotations", type=int, default=20, help="rotations (default 20)")
    parser.add_argument(
        "--requests", type=int, default=500, help="requests per segment (default 500)"
    )
    parser.add_argument("--concurrency", type=int, default=10, help="requests in flight (10)")
    parser.add_argument("--json", type=Path, help="also write every segment and the summary here")
    args = parser.parse_args(argv)
    print(
        f"telemetry overhead: {args.rotations} rotations of {args.requests}-request segments, "
        f"concurrency {args.concurrency}"
    )
    cpu = asyncio.run(run(args.rotations, args.requests, args.concurrency))
    summary = summarise(cpu)
    print()
    for key, value in summary.items():
        print(f"{key:40s} {value:8.3f}")
    if args.json:
        args.json.write_text(json.dumps({"cpu_us_per_request": cpu, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
