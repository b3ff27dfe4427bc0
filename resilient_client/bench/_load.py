"""The load generator: timed calls, their log, the call budget, open and closed loops.

One call is one GET through the client under test, timed and classified
(:func:`timed_call`); every call lands in the :class:`CallLog` of its host with
its start (seconds into the run), its latency and its outcome: ``ok``,
``HTTP <status>``, the exception's type name, :data:`UNFINISHED` when the run's
time limit cancelled it, or :data:`NOT_SENT` when the generator did not start it.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from ._clients import ClientUnderTest
    from ._scenarios import Stream

__all__ = [
    "NOT_SENT",
    "OK",
    "UNFINISHED",
    "CallLog",
    "Calls",
    "open_loop",
    "sent",
    "timed_call",
    "worker",
]

OK = "ok"
# A call still running when its run's time limit came: neither a success nor an error of the client.
UNFINISHED = "unfinished at the time limit"
# A call the load generator did not start because ``max_in_flight`` calls were outstanding.
NOT_SENT = "not sent (load generator cap)"


def sent(outcome: str) -> bool:
    """Whether a call with this outcome was sent (its latency and outcome say something)."""
    return outcome != NOT_SENT


class CallLog:
    """Every call to one host: when it started (s into the run), how long it took, how it ended."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.latencies: list[float] = []
        self.outcomes: list[str] = []

    def add(self, start: float, latency: float, outcome: str) -> None:
        self.starts.append(start)
        self.latencies.append(latency)
        self.outcomes.append(outcome)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def sent_calls(self) -> int:
        return len(self.outcomes) - self.outcomes.count(NOT_SENT)


def _outcome_of(response: httpx.Response) -> str:
    return OK if response.is_success else f"HTTP {response.status_code}"


async def timed_call(client: ClientUnderTest, url: str, log: CallLog, origin: float) -> None:
    """GET ``url`` (body read), logging when it started after ``origin``, its latency, outcome.

    Never raises an ``Exception``: which error each client produces is what the
    bench compares, not a reason to stop. A cancelled call is logged unfinished.
    """
    start = time.perf_counter()
    try:
        outcome = _outcome_of(await client.get(url))
    except asyncio.CancelledError:
        log.add(start - origin, time.perf_counter() - start, UNFINISHED)
        raise
    except Exception as exc:
        outcome = type(exc).__name__
    log.add(start - origin, time.perf_counter() - start, outcome)


class Calls:
    """The calls of one run: a budget of calls in all, and a cap on the calls in flight.

    Beyond the cap a call is logged as not sent rather than piling up tasks.
    """

    def __init__(self, cap: int, budget: int) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self.cap = cap
        self.left = budget

    def take(self) -> bool:
        """Spend one call of the budget; False when none is left."""
        if self.left <= 0:
            return False
        self.left -= 1
        return True

    def start(self, client: ClientUnderTest, url: str, log: CallLog, origin: float) -> None:
        if len(self.tasks) >= self.cap:
            log.add(time.perf_counter() - origin, 0.0, NOT_SENT)
            return
        task = asyncio.create_task(timed_call(client, url, log, origin))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


async def open_loop(
    client: ClientUnderTest,
    url: str,
    stream: Stream,
    log: CallLog,
    calls: Calls,
    origin: float,
    stop_at: float,
    rng: random.Random,
) -> None:
    """Calls arrive as a Poisson process of mean ``stream.rate``, whatever the client does.

    Arrival times are fixed in advance from a seeded generator: a client that
    falls behind meets the same arrivals, in a burst, as a real service would.
    """
    due = time.perf_counter()
    while calls.take():
        due += rng.expovariate(stream.rate)
        if due >= stop_at:
            return
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        calls.start(client, url, log, origin)


async def worker(
    client: ClientUnderTest,
    url: str,
    stream: Stream,
    log: CallLog,
    calls: Calls,
    origin: float,
    stop_at: float,
) -> None:
    """One caller of a closed loop: call, pause ``think_time``, call again, until stop or budget."""
    while time.perf_counter() < stop_at and calls.take():
        await timed_call(client, url, log, origin)
        if stream.think_time:
            await asyncio.sleep(stream.think_time)
        else:
            await asyncio.sleep(0)  # let the other workers and the sampler run
