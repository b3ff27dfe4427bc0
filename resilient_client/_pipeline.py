"""The per-dependency pipeline: every resilience layer of one dependency, composed here.

Outermost first, as a request passes through them::

    deadline    the call's absolute deadline: the earliest of every enclosing
                ``deadline()`` scope and ``timeout.total`` (opened by the client
                around the whole logical call, so redirects, auth round trips
                and the body read share one budget)
    bulkhead    a permit per call in flight, held across its retries; beyond
                ``max_concurrent`` calls wait in a bounded queue, beyond that they
                fail fast. Held until the response body is closed, because an
                open body holds a connection
    retry       the first attempt goes straight through; only a retryable
                outcome starts the retry loop (backoff or Retry-After, stopped by
                attempts, the deadline, the retry budget or an open breaker)
    rate limit  per attempt sent: a slot of the dependency's rate, after any
                Retry-After pause; RateLimitedError if the deadline can't wait
    breaker     per attempt: fails fast while open, admits capped probes when
                half-open, and records the attempt's outcome
    attempt     httpx's per-phase timeouts shrunk to the time left, bounded by
                ``timeout.attempt`` and ``timeout.connect``; a backstop at the limit
    transport   the dependency's own connection pool for the URL's route, leased
                until the body is closed and replaced if it may have lost slots
                (or the transport or mount the user gave the client, as given)
    body        every read of the body bounded by the deadline; closing it
                releases the pool lease, and the permit for the final response

Why this order: the deadline must see everything, queueing included. The
bulkhead sits outside retries so a call's retries never take a second permit
(retries cannot multiply concurrency). Retries sit outside the rate limit and
the breaker so each attempt is counted and admitted on its own: a retry never
slips past an open breaker or over the rate.

Deliberately outside: deciding *which* dependency a URL belongs to (the
registry), and the httpx features around a single request — auth flows,
redirects, cookies, event hooks — which stay exactly httpx's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from ._breaker import CircuitBreaker
from ._budget import RetryBudget
from ._bulkhead import Bulkhead
from ._correlation import HeaderSlot, format_time_left
from ._deadline import monotonic
from ._exceptions import CircuitOpenError, DeadlineExceededError, RateLimitedError, ResilienceError
from ._logging import RejectionLog
from ._pools import DependencyPools, PoolLease
from ._ratelimit import RateLimiter
from ._retry import RETRY_AFTER_CAP, RetryStrategy, retry_after_seconds
from ._settings import DependencyPolicy
from ._telemetry import CallTelemetry, Telemetry
from ._timeout import DeadlineBody, TimeoutStrategy
from ._transports import HTTPXTransportFactory, Route, TransportFactory

__all__ = ["DependencyPipeline"]

RouteSelector = Callable[[httpx.URL], httpx.AsyncBaseTransport]


class DependencyPipeline(httpx.AsyncBaseTransport):
    """The resilience layers and connection pools of one dependency."""

    def __init__(
        self,
        name: str,
        policy: DependencyPolicy,
        *,
        named: bool,
        critical: bool = False,
        route_for: RouteSelector,
        transport_factory: TransportFactory,
        limits: httpx.Limits,
        telemetry: Telemetry,
    ) -> None:
        self.name = name
        self.policy = policy
        # Read on every call: plain attributes of the frozen policy (a pydantic
        # model's attribute reads go through its __getattr__ hook).
        self.total = policy.timeout.total
        self._respect_retry_after = policy.retry.respect_retry_after
        self.named = named
        self.critical = critical
        self._route_for = route_for
        self._timeout = TimeoutStrategy(name, policy.timeout)
        self._bulkhead = Bulkhead(name, policy.bulkhead)
        budget = RetryBudget(policy.retry.budget_ratio, policy.retry.budget_min_per_second)
        self._retry = RetryStrategy(name, policy.retry, budget)
        self._breaker = CircuitBreaker(name, policy.breaker)
        self._rate_limit = RateLimiter(name, policy.rate_limit)
        self._pools = DependencyPools(
            name, transport_factory, limits, policy.bulkhead.max_concurrent
        )
        # httpx's own transport reads its timeouts live (see DeadlineBody).
        self._pools_are_httpx = isinstance(transport_factory, HTTPXTransportFactory)
        self._telemetry = telemetry
        header = telemetry.settings.deadline_header
        self._deadline_header = None if header is None else HeaderSlot(header)
        self._rejections = RejectionLog(name)
        # Dropped from the registry: it only finishes the calls it has. (An
        # attribute, not a property: the client reads it on every call.)
        self.retired = False
        self._on_idle_after_retire: Callable[[DependencyPipeline], None] | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = self._telemetry.start_call(self.name, request)
        if call is not None:
            call.enter()
        try:
            deadline = self._timeout.call_deadline()
            if deadline is not None and monotonic() >= deadline:
                raise self._refused(
                    "deadline",
                    self._timeout.expired_error(request, "before the call was admitted"),
                    request,
                    call,
                )
            if not self._bulkhead.try_acquire():
                try:
                    await self._bulkhead.acquire(deadline)
                except ResilienceError as refusal:
                    reason = (
                        "deadline" if isinstance(refusal, DeadlineExceededError) else "bulkhead"
                    )
                    raise self._refused(reason, refusal, request, call) from None
            try:
                # The first attempt goes straight through; only a retryable outcome
                # starts the retry loop (a frame less on the path every call takes).
                self._retry.budget.record_request()
                try:
                    response = await self._attempt(request, deadline, call)
                except Exception as error:
                    if self._retry.reason_to_retry(request, error) is None:
                        raise
                    response = await self._retry_after(request, error, deadline, call)
                else:
                    if self._retry.reason_to_retry(request, response) is not None:
                        response = await self._retry_after(request, response, deadline, call)
            except BaseException:
                self._release_permit()
                raise
        except BaseException as error:
            if call is not None:
                call.end(error)
            raise
        finally:
            if call is not None:
                call.exit()
        stream = response.stream
        if isinstance(stream, DeadlineBody):
            stream.also_on_close(self._release_permit)
            if call is not None:
                stream.also_on_close(lambda: call.end(stream.failure or response))
        else:
            self._release_permit()  # already read and closed (see _attempt)
            if call is not None:
                call.end(response)
        return response

    def _refused(
        self,
        reason: str,
        error: ResilienceError,
        request: httpx.Request,
        call: CallTelemetry | None,
    ) -> ResilienceError:
        """Report that an attempt was refused before it was sent; return the error."""
        if call is not None:
            call.rejected(reason, str(error))
        self._rejections.rejected(reason, error, self._request_id_of(request))
        return error

    def _request_id_of(self, request: httpx.Request) -> str | None:
        header = self._telemetry.request_id_header
        return None if header is None else header.get(request.headers)

    async def _retry_after(
        self,
        request: httpx.Request,
        first: httpx.Response | Exception,
        deadline: float | None,
        call: CallTelemetry | None,
    ) -> httpx.Response:
        return await self._retry.run(
            request,
            first,
            lambda: self._attempt(request, deadline, call),
            deadline=deadline,
            breaker_open=lambda: self._breaker.state == "open",
            observer=_RetryReport(self, request, call),
        )

    async def _attempt(
        self, request: httpx.Request, deadline: float | None, call: CallTelemetry | None
    ) -> httpx.Response:
        """One attempt: rate limit, breaker admission, timeouts, the pool; outcome recorded."""
        if not self._rate_limit.unlimited_now:
            try:
                await self._rate_limit.acquire(deadline)
            except RateLimitedError as refusal:
                raise self._refused("rate_limit", refusal, request, call) from None
        if deadline is not None and monotonic() >= deadline:
            # Checked before admission, so an attempt never sent is never recorded.
            raise self._refused(
                "deadline",
                self._timeout.expired_error(request, "before the attempt could start"),
                request,
                call,
            )
        try:
            permit = self._breaker.admit()
        except CircuitOpenError as refusal:
            raise self._refused("breaker", refusal, request, call) from None
        deadline_header = self._deadline_header
        if deadline_header is not None:
            time_left = self._timeout.attempt_time_left(deadline)
            if time_left is not None:
                deadline_header.set(request.headers, format_time_left(time_left))
        lease: PoolLease | None = None
        started = 0.0 if call is None else call.attempt_started()
        try:
            route = self._route_for(request.url)
            if isinstance(route, Route):
                lease = self._pools.lease(route)
                transport = lease.transport
            else:
                transport = route  # the user's own transport or mount, used as given
            if call is not None and call.span is not None:
                transport = self._telemetry.attempt_transport(transport)
            guard = self._timeout.begin(request, deadline)
            try:
                response = await transport.handle_async_request(request)
            except BaseException as error:
                # The error itself, or the timeout it stands for (its cause set there).
                interrupted = None if lease is None else lease.interrupted
                raise guard.failed(error, request, interrupted)  # noqa: B904
            guard.succeeded()
        except asyncio.CancelledError as cancelled:
            self._breaker.record_ignored(permit)  # the caller gave up: says nothing of them
            if lease is not None:
                lease.interrupted()
            _release(lease)
            if call is not None:
                call.attempt_ended(started, cancelled)
            raise
        except Exception as error:
            if _is_local(error):
                self._breaker.record_ignored(permit)
                if lease is not None and _waited_for_connection(error):
                    lease.pool_timed_out()
            else:
                self._breaker.record_failure(permit)
            _release(lease)
            if call is not None:
                call.attempt_ended(started, error)
            raise
        if call is not None:
            call.attempt_ended(started, response)
        status = response.status_code
        if status >= 500:
            self._breaker.record_failure(permit)
        elif status == 429:
            # Healthy, and we are over our quota: not the breaker's business (it
            # would refuse calls the quota admits, for longer than asked). The
            # Retry-After pause and the rate limit are what answer a 429.
            self._breaker.record_ignored(permit)
            if self._respect_retry_after:
                pause = retry_after_seconds(response)
                if pause is not None:
                    # Everyone backs off together instead of each finding the limit.
                    self._rate_limit.pause_until(monotonic() + min(pause, RETRY_AFTER_CAP))
        else:
            self._breaker.record_success(permit)
        if response.is_closed:
            # Built from bytes (MockTransport, ASGI apps, caches): already read and
            # closed, so no one will ever close it again. It holds no connection.
            _release(lease)
            return response
        stream = response.stream
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError(
                f"the transport returned a synchronous body stream ({type(stream).__name__})"
            )
        response.stream = DeadlineBody(
            stream,
            deadline=deadline,
            on_close=None if lease is None else lease.release,
            strategy=self._timeout,
            request=request,
            # httpx's own transport reads its timeouts live; another factory's, or
            # the user's own transport, may ignore them.
            read_bound=guard.read_bound if lease is not None and self._pools_are_httpx else None,
        )
        return response

    def _release_permit(self) -> None:
        self._bulkhead.release()
        if self.retired and self.idle and self._on_idle_after_retire is not None:
            callback, self._on_idle_after_retire = self._on_idle_after_retire, None
            callback(self)

    @property
    def has_pools(self) -> bool:
        """Whether this dependency holds any pool that needs closing."""
        return self._pools.open > 0

    @property
    def in_flight(self) -> int:
        return self._bulkhead.in_flight

    @property
    def queued(self) -> int:
        return self._bulkhead.queued

    @property
    def breaker_state(self) -> str:
        return self._breaker.state

    @property
    def idle(self) -> bool:
        return self._bulkhead.in_flight == 0 and self._bulkhead.queued == 0

    def retire(self, on_idle: Callable[[DependencyPipeline], None]) -> None:
        """Stop tracking this pipeline: ``on_idle`` runs once no call is using it any more.

        Calls already in flight finish normally on the pools they hold.
        """
        self.retired = True
        if self.idle:
            on_idle(self)
        else:
            self._on_idle_after_retire = on_idle

    async def aclose(self) -> None:
        """Close the pools this dependency built (never the user's own transports)."""
        await self._pools.aclose()

    def health(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of this dependency's state."""
        bulkhead = self.policy.bulkhead
        limits = self._pools.limits
        breaker = self._breaker.health()
        return {
            "kind": "named" if self.named else "host",
            "critical": self.critical,
            # Usable unless its breaker is open: half-open is already probing.
            "usable": breaker["state"] != "open",
            "in_flight": self._bulkhead.in_flight,
            "queued": self._bulkhead.queued,
            "max_concurrent": bulkhead.max_concurrent,
            "max_queue": bulkhead.max_queue,
            "breaker": breaker,
            "retry": {
                "budget_left": self._retry.budget.available(),
                "retries_by_reason": dict(self._retry.retries_by_reason),
            },
            "rate_limit": self._rate_limit.health(),
            "pool": {
                "max_connections": limits.max_connections,
                "max_keepalive": limits.max_keepalive_connections,
                "open_pools": self._pools.open,
                "replaced": self._pools.replaced,
            },
            "timeout": self.policy.timeout.model_dump(),
        }


class _RetryReport:
    """Tells telemetry and the logs what one call's retry loop did."""

    __slots__ = ("_call", "_pipeline", "_request")

    def __init__(
        self, pipeline: DependencyPipeline, request: httpx.Request, call: CallTelemetry | None
    ) -> None:
        self._pipeline = pipeline
        self._request = request
        self._call = call

    def retrying(self, reason: str, wait: float) -> None:
        if self._call is not None:
            self._call.retrying(reason, wait)

    def retry_refused(self, reason: str, message: str) -> None:
        pipeline = self._pipeline
        if self._call is not None:
            self._call.rejected(reason, message)
        pipeline._rejections.rejected(
            reason, f"retry not made: {message}", pipeline._request_id_of(self._request)
        )


def _release(lease: PoolLease | None) -> None:
    if lease is not None:
        lease.release()


def _waited_for_connection(error: BaseException) -> bool:
    """The pool had no connection for the call in time (maybe cut short by the deadline)."""
    return isinstance(error, httpx.PoolTimeout) or isinstance(error.__cause__, httpx.PoolTimeout)


def _is_local(error: BaseException) -> bool:
    """A wait on our side ran out, or we refused: not the dependency's doing."""
    if _waited_for_connection(error):
        return True
    return isinstance(error, ResilienceError) and not isinstance(error, DeadlineExceededError)
