"""Retries that cannot become a storm: what is retried, how long to wait, when to stop.

The decisions, in the order they are taken after an attempt:

1. Is the outcome retryable at all?
   - an error where the request never reached the server (connect error or
     connect timeout): for any method;
   - a retryable status (``retry_on_status``), a read/write timeout, or a dropped
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

The first attempt runs outside tenacity: almost every call succeeds at once,
and tenacity's machinery costs more than the request's own bookkeeping. Only a
retryable first outcome starts a fresh ``AsyncRetrying`` (one per call:
tenacity keeps statistics in a thread-local that every task would share).
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
    """What the retry loop reports, for telemetry and logs."""

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

    def __init__(self, dependency: str, policy: RetryPolicy, budget: RetryBudget) -> None:
        self._dependency = dependency
        self._policy = policy
        # Read on every call: plain attributes of the frozen policy.
        self._attempts = policy.attempts
        self._retry_on_status = policy.retry_on_status
        self.budget = budget
        self._wait_backoff = tenacity.wait_random_exponential(
            multiplier=policy.backoff_base, max=policy.backoff_max
        )
        self.retries_by_reason: dict[str, int] = {}

    def safe_to_resend(self, request: httpx.Request) -> bool:
        return replayable(request) and (
            request.method in IDEMPOTENT_METHODS or "idempotency-key" in request.headers
        )

    def reason_to_retry(self, request: httpx.Request, outcome: Outcome) -> str | None:
        """Why this outcome may be retried, or None when it must not be."""
        if self._attempts < 2:
            return None
        if isinstance(outcome, httpx.Response):
            if outcome.status_code in self._retry_on_status and self.safe_to_resend(request):
                return f"status {outcome.status_code}"
            return None
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
        attempt: Attempt,
        *,
        deadline: float | None,
        breaker_open: Callable[[], bool],
        observer: RetryObserver,
    ) -> httpx.Response:
        """Retry after a retryable ``first`` outcome; return or raise the final outcome."""
        pending: list[Outcome] = [first]
        last: list[Outcome] = [first]  # what to hand back if a retry is refused

        async def next_attempt() -> httpx.Response:
            if pending:  # the first attempt, already made outside tenacity
                outcome = pending.pop()
                if isinstance(outcome, BaseException):
                    raise outcome
                return outcome
            try:
                response = await attempt()
            except (CircuitOpenError, RateLimitedError) as refusal:
                # Refused before anything was sent (the breaker opened, or the rate
                # limit can't fit it in time): the outcome we already have is the answer.
                # (The pipeline has reported the refusal.)
                raise _Refused(last[0], refusal) from None
            except DeadlineExceededError as expired:
                # The deadline ran out during a retry: a response already in hand
                # (a 503, say) tells the caller more than the timeout does.
                if isinstance(last[0], httpx.Response):
                    raise _Refused(last[0], expired) from None
                last[0] = expired
                raise
            except BaseException as error:
                last[0] = error
                raise
            last[0] = response
            return response

        def retryable(state: RetryCallState) -> bool:
            outcome = _outcome_of(state)
            if isinstance(outcome, _Refused):
                return False
            return self.reason_to_retry(request, outcome) is not None

        def wait(state: RetryCallState) -> float:
            outcome = _outcome_of(state)
            if self._policy.respect_retry_after and isinstance(outcome, httpx.Response):
                asked = retry_after_seconds(outcome)
                if asked is not None:
                    return asked
            return float(self._wait_backoff(state))

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= self._policy.attempts:
                return True
            wait = state.upcoming_sleep
            if deadline is not None and monotonic() + wait >= deadline:
                # It could only fail later: hand back what we have now.
                observer.retry_refused(
                    "deadline", f"a retry in {wait:.3f}s would pass the deadline"
                )
                return True
            if deadline is None and wait > RETRY_AFTER_CAP:
                return True
            if breaker_open():
                observer.retry_refused("breaker", "the circuit breaker is open")
                return True
            if not self.budget.try_spend():  # last: it consumes a token
                observer.retry_refused("retry_budget", "the retry budget is spent")
                return True
            return False

        async def before_sleep(state: RetryCallState) -> None:
            outcome = _outcome_of(state)
            reason = self.reason_to_retry(request, outcome) or "unknown"
            self.retries_by_reason[reason] = self.retries_by_reason.get(reason, 0) + 1
            observer.retrying(reason, state.upcoming_sleep)
            if isinstance(outcome, httpx.Response):
                # Read a small body so the connection goes back to the pool and the
                # response can still be handed back if the next try is refused; a
                # large one is closed (its connection with it) before we try again.
                await _drain(outcome)

        def give_up(state: RetryCallState) -> httpx.Response:
            outcome = _outcome_of(state)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        retrying = tenacity.AsyncRetrying(
            retry=retryable,
            wait=wait,
            stop=stop,
            before_sleep=before_sleep,
            retry_error_callback=give_up,
            sleep=asyncio.sleep,
        )
        try:
            return await retrying(next_attempt)
        except _Refused as refused:
            previous = refused.previous
            if isinstance(previous, httpx.Response) and _readable(previous):
                return previous
            if isinstance(previous, BaseException) and not isinstance(
                refused.refusal, DeadlineExceededError
            ):
                raise previous from None
            raise refused.refusal from None


class _Refused(Exception):
    """A retry refused before sending; carries the outcome the call already had."""

    def __init__(self, previous: Outcome, refusal: Exception) -> None:
        super().__init__(str(refusal))
        self.previous = previous
        self.refusal = refusal


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
