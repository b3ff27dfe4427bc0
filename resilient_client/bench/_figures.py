"""The bench's figures, from the calls' logs and the upstream's counts.

Per host: counts, errors by type, latency percentiles and upstream requests per
call (:func:`host_figures`); the same per time window of the load
(:func:`host_timeline`) and the requests after it (:func:`requests_after`);
requests per call within an outage (:func:`amplification_between`); how long
calls kept failing after it (:func:`recovery_time`); the share of a throttling
host's quota a client used (:func:`quota_use`); the breaker's states as
sampled (:func:`breaker_timeline`); and each client's CPU cost (:func:`overhead`).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._load import OK, CallLog, sent
from ._stats import latency_summary

if TYPE_CHECKING:
    from ._runner import ClientRun, ScenarioResult

__all__ = [
    "amplification_between",
    "breaker_timeline",
    "host_figures",
    "host_timeline",
    "overhead",
    "quota_use",
    "recovery_time",
    "requests_after",
    "window_of",
]


def host_figures(log: CallLog, received: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """Counts, errors by type, latency percentiles and amplification for one host."""
    latencies = [
        latency
        for latency, outcome in zip(log.latencies, log.outcomes, strict=True)
        if sent(outcome)
    ]
    outcomes = Counter(log.outcomes)
    calls = sum(n for outcome, n in outcomes.items() if sent(outcome))
    upstream = sum(received.get("outcomes", {}).values())
    return {
        "calls": calls,
        "ok": outcomes[OK],
        "errors": {name: n for name, n in outcomes.most_common() if name != OK},
        "success_ratio": round(outcomes[OK] / calls, 4) if calls else None,
        "calls_per_s": round(calls / seconds, 1) if seconds else None,
        "latency_ms": latency_summary(latencies),
        "upstream": {
            "requests": upstream,
            "answered": dict(received.get("outcomes", {})),
            "per_call": round(upstream / calls, 3) if calls else None,
        },
    }


# The levels drawn per time window.
_WINDOW_LEVELS = (("p50", 0.5), ("p99", 0.99))


def window_of(duration: float) -> float:
    """The width of one time window in the timelines: about 40 windows a run."""
    return min(1.0, max(0.1, round(duration / 40, 2)))


def host_timeline(
    log: CallLog, received: Mapping[str, Any], bucket: float, window: float, until: float
) -> list[dict[str, Any]]:
    """Per window of ``[0, until)``: calls (by their start), ok, p50/p99, errors by type,
    and the requests the server received in it.

    Calls all start before ``until``, when the load ends; requests the server
    received from then on (retries, calls queued in the client) are not load in
    any window: :func:`requests_after` counts them.
    """
    count = max(1, math.ceil(until / window))
    latencies: list[list[float]] = [[] for _ in range(count)]
    outcomes: list[Counter[str]] = [Counter() for _ in range(count)]
    for start, latency, outcome in zip(log.starts, log.latencies, log.outcomes, strict=True):
        index = min(count - 1, max(0, int(start / window)))
        outcomes[index][outcome] += 1
        if sent(outcome):
            latencies[index].append(latency)
    requests = [0] * count
    for key, slot in received.get("timeline", {}).items():
        if not _after(int(key), bucket, until):  # those are requests_after()'s
            index = min(count - 1, int(int(key) * bucket / window + 1e-9))
            requests[index] += sum(slot.values())
    rows = []
    for index in range(count):
        levels = latency_summary(latencies[index], _WINDOW_LEVELS)
        rows.append(
            {
                "t": round(index * window, 3),
                "calls": sum(outcomes[index].values()),
                "ok": outcomes[index][OK],
                "p50_ms": levels["p50"],
                "p99_ms": levels["p99"],
                "errors": {k: n for k, n in outcomes[index].items() if k != OK},
                "upstream_requests": requests[index],
            }
        )
    return rows


def requests_after(received: Mapping[str, Any], bucket: float, until: float) -> int:
    """Requests the server received after the load ended at ``until`` (in buckets from then)."""
    return sum(
        sum(slot.values())
        for key, slot in received.get("timeline", {}).items()
        if _after(int(key), bucket, until)
    )


def _after(index: int, bucket: float, until: float) -> bool:
    """Whether the server's bucket ``index`` begins at or after ``until``."""
    return index * bucket >= until - 1e-9


def recovery_time(
    log: CallLog, outage_end: float, until: float, window: float = 0.25, good: float = 0.95
) -> float | None:
    """Seconds from the outage's end until calls succeed again; None if not before ``until``.

    Calls are grouped by start time in ``window``-second windows from the end of
    the outage on; the time is the end of the last window in which fewer than
    ``good`` of the calls succeeded (0 when every window after the end was good).
    """
    windows: dict[int, list[int]] = {}
    for start, outcome in zip(log.starts, log.outcomes, strict=True):
        if outage_end <= start < until and sent(outcome):
            slot = windows.setdefault(int((start - outage_end) / window), [0, 0])
            slot[0] += 1
            slot[1] += outcome == OK
    if not windows:
        return None
    bad = [index for index, (calls, ok) in windows.items() if ok < good * calls]
    if not bad:
        return 0.0
    last = max(bad)
    if outage_end + (last + 1) * window >= until - window:
        return None  # still failing at the end of the run
    return round((last + 1) * window, 3)


def quota_use(
    received: Mapping[str, Any], bucket: float, quota: float, until: float
) -> dict[str, Any]:
    """How much of a throttling host's quota (``quota`` requests/s) the client turned into answers.

    ``quota_share`` is the requests the host answered (not with 429) over what
    the quota allowed while the client was sending: ``quota`` times the span
    from the first to the end of the last of the server's buckets with a
    request. ``quota_share_during_load`` counts only the load's ``[0, until)``:
    a client still sending after the load (calls it held back) fills that span
    slowly. ``upstream_429`` is how many 429s the client drew.
    """
    timeline = received.get("timeline", {})
    busy = sorted(int(key) for key, slot in timeline.items() if any(slot.values()))
    sending = (busy[-1] + 1 - busy[0]) * bucket if busy else 0.0
    answered = received.get("outcomes", {})
    served = answered.get("ok", 0)
    during = sum(
        slot.get("ok", 0) for key, slot in timeline.items() if not _after(int(key), bucket, until)
    )
    return {
        "quota_per_s": quota,
        "sending_s": round(sending, 3),
        "upstream_ok": served,
        "upstream_429": answered.get("throttled", 0),
        "quota_share": round(served / (quota * sending), 3) if sending else None,
        "quota_share_during_load": round(during / (quota * until), 3) if until > 0 else None,
    }


def amplification_between(
    log: CallLog, received: Mapping[str, Any], bucket: float, start: float, end: float
) -> dict[str, Any]:
    """Requests the server received per call started, counting only ``[start, end)``.

    The server counts requests in buckets, so both are counted over the buckets
    that begin within ``[start, end)``: calls by the bucket their start falls in.
    (Counting calls over ``[start, end)`` itself measured two different spans
    wherever the window did not begin and end on bucket edges.)
    """
    first = math.ceil(start / bucket - 1e-9)
    last = math.ceil(end / bucket - 1e-9)  # the first bucket that begins at or after ``end``
    calls = sum(
        1
        for s, o in zip(log.starts, log.outcomes, strict=True)
        if first <= int(s / bucket + 1e-9) < last and sent(o)
    )
    requests = sum(
        sum(slot.values())
        for key, slot in received.get("timeline", {}).items()
        if first <= int(key) < last
    )
    return {
        "calls": calls,
        "upstream_requests": requests,
        "per_call": round(requests / calls, 3) if calls else None,
    }


def breaker_timeline(run: ClientRun, names: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each host's breaker state (and calls in flight and queued, and the throttle's
    rate) as sampled, keyed by the scenario's names."""
    timeline = []
    for at, sample in run.samples:
        states = {names[dep]: values for dep, values in sample.items() if dep in names}
        timeline.append({"t": round(at, 3), "hosts": states})
    return timeline


def overhead(result: ScenarioResult, baseline: str = "httpx") -> dict[str, Any]:
    """Each client's CPU per call and calls per second, and their ratios to ``baseline``'s.

    Each figure is the median over the client's segments (healthy alternates the
    clients in segments; the other scenarios have one), so that a segment the
    machine disturbed moves it little; each ratio is the ratio of the figures,
    so it agrees with the numbers printed beside it.
    """
    medians = {run.spec.key: _segment_medians(run.segments) for run in result.runs}
    base_cpu, base_rate = medians.get(baseline, (None, None))
    figures: dict[str, Any] = {}
    for key, (cpu, rate) in medians.items():
        entry: dict[str, Any] = {
            "cpu_us_per_call": None if cpu is None else round(cpu * 1e6, 1),
            "calls_per_s": None if rate is None else round(rate, 1),
        }
        if key != baseline and cpu is not None and base_cpu:
            entry["cpu_ratio_vs_httpx"] = round(cpu / base_cpu, 3)
        if key != baseline and rate is not None and base_rate:
            entry["throughput_ratio_vs_httpx"] = round(rate / base_rate, 3)
        figures[key] = entry
    return figures


def _segment_medians(
    segments: Sequence[tuple[int, float, float]],
) -> tuple[float | None, float | None]:
    """The median CPU seconds per call and calls per second over (calls, CPU s, wall s)."""
    cpu = [seconds / calls for calls, seconds, _ in segments if calls]
    rate = [calls / wall for calls, _, wall in segments if calls and wall > 0]
    return (
        statistics.median(cpu) if cpu else None,
        statistics.median(rate) if rate else None,
    )
