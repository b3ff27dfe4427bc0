"""Retries that cannot become a storm: what is retried, how long to wait, when to stop.

The decisions, in the order they are taken after an attempt:

1. Is the outcome retryable at all?
   - an error where the request never reached the server (connect error or
     connect timeout): for any method;
   - a 429 (when in ``retry_on_status``): for any method, since the request was
     not processed;
   - another retryable status (``retry_on_status``), a read/write timeout, or a dropped
     connection: only when resending is safe — an idempotent method (GET, HEAD,
     OPTIONS, PUT, DELETE, TRACE) or an ``Idempotency-Key`` header. A POST that
     may have reached the server is never sent twice on our own initiative;
   - never: a body that cannot be replayed (a generator), a local wait that ran
     out (``httpx.PoolTimeout``, the bulkhead queue: the caller is saturated,
     retrying deepens it), our own rejections, the call's deadline.
2. How long to wait: ``Retry-After`` (seconds or HTTP-date) when the response
   has one and ``respect_retry_after`` (never earlier than it says), otherwise
   full-jitter exponential backoff: uniform(0, min(backoff_max, backoff_base * 2**n)).
3. Stop instead, and hand back the last outcome, when: ``attempts`` are used up;
   the wait would end past the deadline (give up now rather than sleep past it);
   a ``Retry-After`` exceeds :data:`RETRY_AFTER_CAP` with no deadline to bound
   it; the circuit breaker is open; or the retry budget is spent.

When attempts stop on a retryable status the last response is returned, as
httpx would have returned it; on an error, the last error is raised. A retry
that the deadline cuts short hands back the response already in hand, if any.

The pipeline makes the first attempt itself, outside tenacity: almost every
call succeeds at once, and a fresh ``AsyncRetrying`` costs about 64 µs of CPU
a call here, 3.7 to 4.4% of a whole request (benchmarks/results/
2026-12-08-shortcuts.md). Only a retryable first outcome starts
:meth:`RetryStrategy.run`, a plain ``async for`` over a fresh ``AsyncRetrying``.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Protocol

import httpx
import tenacity
from tenacity import RetryCallState

from ._budget import RetryBudget
from ._deadline import monotonic
from ._exceptions import (
    CircuitOpenError,
    DeadlineExceededError,
    RateLimitedError,
    ResilienceError,
)
from ._settings import RetryPolicy

__all__ = ["IDEMPOTENT_METHODS", "RETRY_AFTER_CAP", "RetryStrategy", "retry_after_seconds"]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# With no deadline to bound it, a Retry-After longer than this ends the retries.
RETRY_AFTER_CAP = 60.0

# Errors raised before the request could reach the server: safe to resend anything.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
# Errors after which the server may have acted on the request.
_MAYBE_SENT = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)

Outcome = httpx.Response | BaseException
Attempt = Callable[[], Awaitable[httpx.Response]]


class RetryObserver(Protocol):
    """What the retry loop asks of its caller, and reports to it (telemetry and logs)."""

    def breaker_open(self) -> bool:
        """Whether the dependency's circuit breaker is open (no retry then)."""

    def retrying(self, reason: str, wait: float) -> None:
        """A retry is scheduled ``wait`` seconds from now, for ``reason``."""

    def retry_refused(self, reason: str, message: str) -> None:
        """A retry the outcome called for was not made: ``breaker``, ``retry_budget``
        or ``deadline`` (running out of ``attempts`` is not a refusal)."""


def retry_after_seconds(response: httpx.Response, now: float | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds (None if absent or invalid)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    wall = time.time() if now is None else now
    return max(0.0, when.timestamp() - wall)


def replayable(request: httpx.Request) -> bool:
    """Whether the request's body can be sent again (bytes can; a generator cannot)."""
    return isinstance(request.stream, httpx.ByteStream)


class RetryStrategy:
    """Retry decisions for one dependency; ``run()`` drives the retries of one call."""

    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        retries_by_reason: dict[str, int] | None = None,
    ) -> None:
        self.policy = policy
        self.budget = budget  # may be shared by the routes of a dependency
        self.wait_backoff = tenacity.wait_random_exponential(
            multiplier=policy.backoff_base, max=policy.backoff_max
        )
        # Retries made, by reason (shared, like the budget, by a dependency's routes).
        self.retries_by_reason = {} if retries_by_reason is None else retries_by_reason

    def safe_to_resend(self, request: httpx.Request) -> bool:
        return replayable(request) and (
            request.method in IDEMPOTENT_METHODS or "idempotency-key" in request.headers
        )

    def reason_to_retry(self, request: httpx.Request, outcome: Outcome) -> str | None:
        """Why this outcome may be retried, or None when it must not be."""
        if self.policy.attempts < 2:
            return None
        if isinstance(outcome, httpx.Response):
            status = outcome.status_code
            if status not in self.policy.retry_on_status:
                return None
            # A 429 says the request was not processed: as safe to resend as a
            # request that never left.
            safe = replayable(request) if status == 429 else self.safe_to_resend(request)
            return f"status {status}" if safe else None
        if isinstance(outcome, ResilienceError | httpx.PoolTimeout):
            return None
        if isinstance(outcome, _NEVER_SENT):
            return type(outcome).__name__ if replayable(request) else None
        if isinstance(outcome, _MAYBE_SENT) or type(outcome) is httpx.TimeoutException:
            return type(outcome).__name__ if self.safe_to_resend(request) else None
        return None

    async def run(
        self,
        request: httpx.Request,
        first: Outcome,
        send: Attempt,
        *,
        deadline: float | None,
        observer: RetryObserver,
    ) -> httpx.Response:
        """Retry after a retryable ``first`` outcome; return or raise the final outcome.

        Each pass hands tenacity the outcome in hand; it decides whether to retry,
        how long to wait and whether to stop (``_RetryDecisions``), and sleeps;
        the next pass sends again. A retry refused before anything was sent (the
        breaker opened, the rate limit or the deadline cannot fit it) ends the
        loop with the outcome already in hand (see :func:`_hand_back`), and so
        does a retry the deadline cuts short.
        """
        decisions = _RetryDecisions(self, request, deadline, observer)
        outcome: Outcome = first
        async for attempt in decisions.retrying():
            if attempt.retry_state.attempt_number > 1:
                try:
                    outcome = await send()
                except _ENDS_THE_RETRIES as refusal:
                    return _hand_back(outcome, refusal)
                except Exception as error:
                    outcome = error
            with attempt:
                if isinstance(outcome, BaseException):
                    raise outcome
            if isinstance(outcome, httpx.Response):
                attempt.retry_state.set_result(outcome)
        # tenacity stopped: the last outcome is the call's.
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


# A retry the breaker or the rate limit refused before sending (the pipeline has
# reported it), or that the deadline cut short: the outcome in hand is the answer.
_ENDS_THE_RETRIES = (CircuitOpenError, RateLimitedError, DeadlineExceededError)


class _RetryDecisions:
    """tenacity's questions about one call, answered by the dependency's retry policy."""

    __slots__ = ("_deadline", "_observer", "_request", "_strategy")

    def __init__(
        self,
        strategy: RetryStrategy,
        request: httpx.Request,
        deadline: float | None,
        observer: RetryObserver,
    ) -> None:
        self._strategy = strategy
        self._request = request
        self._deadline = deadline
        self._observer = observer

    def retrying(self) -> tenacity.AsyncRetrying:
        # A fresh one per call: tenacity keeps statistics in a thread-local that
        # every task of the loop would share.
        return tenacity.AsyncRetrying(
            retry=self.retryable,
            wait=self.wait,
            stop=self.stop,
            before_sleep=self.before_sleep,
            # Stopping is not an error: the loop hands back the last outcome.
            retry_error_callback=_stopped,
            sleep=asyncio.sleep,
        )

    def retryable(self, state: RetryCallState) -> bool:
        return self._strategy.reason_to_retry(self._request, _outcome_of(state)) is not None

    def wait(self, state: RetryCallState) -> float:
        outcome = _outcome_of(state)
        if self._strategy.policy.respect_retry_after and isinstance(outcome, httpx.Response):
            asked = retry_after_seconds(outcome)
            if asked is not None:
                return asked
        return float(self._strategy.wait_backoff(state))

    def stop(self, state: RetryCallState) -> bool:
        if state.attempt_number >= self._strategy.policy.attempts:
            return True
        wait, deadline, observer = state.upcoming_sleep, self._deadline, self._observer
        if deadline is not None and monotonic() + wait >= deadline:
            # It could only fail later: hand back what we have now.
            observer.retry_refused("deadline", f"a retry in {wait:.3f}s would pass the deadline")
            return True
        if deadline is None and wait > RETRY_AFTER_CAP:
            return True
        if observer.breaker_open():
            observer.retry_refused("breaker", "the circuit breaker is open")
            return True
        if not self._strategy.budget.try_spend():  # last: it consumes a token
            observer.retry_refused("retry_budget", "the retry budget is spent")
            return True
        return False

    async def before_sleep(self, state: RetryCallState) -> None:
        outcome = _outcome_of(state)
        reason = self._strategy.reason_to_retry(self._request, outcome) or "unknown"
        counts = self._strategy.retries_by_reason
        counts[reason] = counts.get(reason, 0) + 1
        self._observer.retrying(reason, state.upcoming_sleep)
        if isinstance(outcome, httpx.Response):
            # Read a small body so the connection goes back to the pool and the
            # response can still be handed back if the next try is refused; a
            # large one is closed (its connection with it) before we try again.
            await _drain(outcome)


def _stopped(state: RetryCallState) -> None:
    return None


def _hand_back(previous: Outcome, refusal: Exception) -> httpx.Response:
    """The answer when a retry was refused before sending: the outcome already in hand.

    A response already read (a 503, say) tells the caller more than the refusal;
    a previous error is re-raised, unless the deadline ran out, which is then the
    call's error.
    """
    if isinstance(previous, httpx.Response):
        if _readable(previous):
            return previous
        raise refusal from None
    if isinstance(refusal, DeadlineExceededError):
        raise refusal from None
    raise previous from None


# Bodies up to this size are read before a retry, so the response can be returned later.
_DRAIN_LIMIT = 64 * 1024


async def _drain(response: httpx.Response) -> None:
    try:
        length = int(response.headers.get("content-length", _DRAIN_LIMIT + 1))
        if length <= _DRAIN_LIMIT:
            await response.aread()
    except (httpx.HTTPError, ValueError):
        pass  # it could not be read: it is closed below and can't be handed back
    finally:
        await response.aclose()


def _readable(response: httpx.Response) -> bool:
    """Whether the response's body was read before it was closed (see _drain)."""
    try:
        response.content  # noqa: B018
    except httpx.ResponseNotRead:
        return False
    return True


def _outcome_of(state: RetryCallState) -> Outcome:
    future = state.outcome
    assert future is not None
    if future.failed:
        error = future.exception()
        assert error is not None
        return error
    result = future.result()
    assert isinstance(result, httpx.Response)
    return result
