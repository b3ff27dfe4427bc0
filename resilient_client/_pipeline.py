"""The per-dependency pipeline: every resilience layer of one dependency, composed here.

This module is the one place where the layers' order is decided (the docs
explain it and point here). A call meets them outermost first, each one a step
of :class:`DependencyPipeline`::

    handle_async_request   one logical call, with its route's timeouts and
                           retries (the first of ``routes`` that matches, else the
                           dependency's) and its deadline: the earliest of
                           every enclosing ``deadline()`` scope and ``timeout.total``
                           (the client opens a scope around the whole logical
                           call, so redirects, auth round trips and the body
                           read share one budget)
    pace                   a slot of the configured rate limit, then of the
                           adaptive throttle (off until a 429), within the
                           deadline (_pace)
    admit                  refuse a call whose deadline has passed; take a
                           bulkhead permit, or wait in its bounded queue, or fail
                           fast (_admit)
    send                   the first attempt; only a retryable outcome starts
                           the retry loop, RetryStrategy.run, whose every retry
                           is paced again (_send, _paced_attempt)
      attempt              per attempt sent (_attempt):
        admit the attempt  the deadline, then the breaker: fails fast while open,
                           capped probes when half-open (_admit_attempt)
        tell the time left the deadline header (_stamp_time_left)
        timeouts           httpx's per-phase timeouts shrunk to the time left,
                           bounded by timeout.attempt and timeout.connect, and a
                           backstop at the limit (TimeoutStrategy.begin)
        transport          the dependency's own pool for the URL's route, leased
                           until the body closes; or the user's own transport or
                           mount, as given (_transport_for)
        record             the outcome, for the breaker; a 429 for the throttle
                           (_record_error, _record_response)
        wrap the body      every read bounded by the deadline; closing it ends
                           the pool lease (_wrap_body)
    release                the permit, and the call's telemetry, end when the
                           final response's body closes: an open body holds a
                           connection (_hand_over)

Why this order: the deadline must see everything, queueing included. Pacing
comes before the bulkhead: a call waiting for its slot of a rate is not in
flight to the dependency, and must not hold a permit that a call ready to go
could use (with a permit held, calls waiting out a quota filled the bulkhead and
the rest failed with BulkheadFullError). The bulkhead sits outside retries so a
call's retries never take a second permit (retries cannot multiply
concurrency). Each retry is paced and admitted by the breaker on its own: a
retry never slips past an open breaker or over the rate.

Deliberately outside: deciding *which* dependency a URL belongs to (the
registry), and the httpx features around a single request (auth flows,
redirects, cookies, event hooks), which stay exactly httpx's own.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import httpx

from ._breaker import Permit
from ._budget import RetryBudget
from ._bulkhead import Bulkhead
from ._correlation import HeaderSlot, format_time_left
from ._deadline import monotonic
from ._exceptions import CircuitOpenError, DeadlineExceededError, RateLimitedError, ResilienceError
from ._hosts import HostState, HostStates
from ._logging import RejectionLog
from ._pools import DependencyPools, PoolLease
from ._ratelimit import RateLimiter
from ._retry import RetryStrategy, retry_after_seconds
from ._routes import RouteTable
from ._settings import DependencyPolicy, RoutePolicy
from ._telemetry import CallTelemetry, Telemetry
from ._timeout import AttemptGuard, DeadlineBody, TimeoutStrategy
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
        max_tracked_hosts: int = 1024,
        route_for: RouteSelector,
        transport_factory: TransportFactory,
        limits: httpx.Limits,
        telemetry: Telemetry,
    ) -> None:
        self.name = name
        self.policy = policy
        self.named = named
        self.critical = critical
        self._route_for = route_for
        self._bulkhead = Bulkhead(name, policy.bulkhead)
        budget = RetryBudget(policy.retry.budget_ratio, policy.retry.budget_min_per_second)
        self._retries_by_reason: dict[str, int] = {}
        # The dependency's timeouts and retries, and each route's (first match wins):
        # one budget and one count of retries for them all.
        self._timeout = TimeoutStrategy(name, policy.timeout)
        self._retry = RetryStrategy(policy.retry, budget, self._retries_by_reason)
        self._routes = RouteTable(
            (key, _Route(name, route, budget, self._retries_by_reason))
            for key, route in policy.resolved_routes
        )
        # A breaker and a throttle per host: one host's failures are its own.
        self._hosts = HostStates(
            name, policy.breaker, single=not named, max_tracked=max_tracked_hosts
        )
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
        # Dropped from the registry: it only finishes the calls it has.
        self.retired = False
        self._on_idle_after_retire: Callable[[DependencyPipeline], None] | None = None

    def strategies_for(self, request: httpx.Request) -> tuple[TimeoutStrategy, RetryStrategy]:
        """The timeouts and retries of the request's route, or the dependency's own."""
        if not self._routes.empty:
            route = self._routes.match(request.method, request.url.path)
            if route is not None:
                return route.timeout, route.retry
        return self._timeout, self._retry

    # -- the call: admit, send (and retry), hand the body over -------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """One logical call through the layers, in the order the module docstring draws."""
        timeout, retry = self.strategies_for(request)
        call = _Call(
            self,
            request,
            self._hosts.for_url(request.url),
            timeout,
            retry,
            self._telemetry.start_call(self.name, request),
        )
        try:
            await self._pace(call)  # before the permit: waiting for the rate holds none
            await self._admit(call)
            try:
                response = await self._send(call)
            except BaseException:
                self._release_permit()
                raise
        except BaseException as error:
            call.end(error)
            raise
        finally:
            call.leave()
        return self._hand_over(call, response)

    async def _admit(self, call: _Call) -> None:
        """Refuse a call whose deadline has passed; take a bulkhead permit, or queue, or fail."""
        deadline = call.deadline
        if deadline is not None and monotonic() >= deadline:
            expired = call.timeout.expired_error(call.request, "before the call was admitted")
            raise call.refused("deadline", expired)
        try:
            await self._bulkhead.acquire(deadline)
        except ResilienceError as refusal:
            reason = "deadline" if isinstance(refusal, DeadlineExceededError) else "bulkhead"
            raise call.refused(reason, refusal) from None

    async def _send(self, call: _Call) -> httpx.Response:
        """The first attempt; only a retryable outcome starts the retry loop."""
        retry = call.retry
        retry.budget.record_request()
        request = call.request
        try:
            response = await self._attempt(call)
        except Exception as error:
            if retry.reason_to_retry(request, error) is None:
                raise
            first: httpx.Response | Exception = error
        else:
            if retry.reason_to_retry(request, response) is None:
                return response
            first = response
        paced_attempt = partial(self._paced_attempt, call)
        return await retry.run(request, first, paced_attempt, deadline=call.deadline, observer=call)

    def _hand_over(self, call: _Call, response: httpx.Response) -> httpx.Response:
        """The permit and the call's telemetry end when the body closes."""
        stream = response.stream
        if not isinstance(stream, DeadlineBody):
            self._release_permit()  # already read and closed (see _wrap_body)
            call.end(response)
            return response
        stream.also_on_close(self._release_permit)
        if call.telemetry is not None:
            stream.also_on_close(lambda: call.end(stream.failure or response))
        return response

    # -- one attempt: admit it, send it within its timeouts, record it, wrap the body --

    async def _paced_attempt(self, call: _Call) -> httpx.Response:
        """A retry: its own slot of the rate, then the attempt."""
        await self._pace(call)
        return await self._attempt(call)

    async def _attempt(self, call: _Call) -> httpx.Response:
        """One attempt: breaker, timeouts, the pool; its outcome recorded."""
        permit = self._admit_attempt(call)
        call.host.throttle.sent()
        request = call.request
        self._stamp_time_left(call)
        started = call.attempt_started()
        lease: PoolLease | None = None
        guard: AttemptGuard | None = None
        try:
            transport, lease = self._transport_for(call)
            guard = call.timeout.begin(request, call.deadline)
            try:
                response = await transport.handle_async_request(request)
            except BaseException as error:
                # The error itself, or the timeout it stands for (its cause set there).
                interrupted = None if lease is None else lease.interrupted
                raise guard.failed(error, request, interrupted)  # noqa: B904
            guard.succeeded()
        except BaseException as error:
            self._record_error(error, call.host, permit, lease, guard)
            call.attempt_ended(started, error)
            raise
        call.attempt_ended(started, response)
        self._record_response(response, call.host, permit, guard.started)
        return self._wrap_body(response, call, lease, guard.read_bound)

    async def _pace(self, call: _Call) -> None:
        """A slot of the configured rate limit, then of the adaptive throttle."""
        try:
            await self._rate_limit.acquire(call.deadline)
            await call.host.throttle.acquire(call.deadline)
        except RateLimitedError as refusal:
            raise call.refused("rate_limit", refusal) from None

    def _admit_attempt(self, call: _Call) -> Permit:
        """The deadline, then the breaker: an attempt never sent is never recorded."""
        deadline = call.deadline
        if deadline is not None and monotonic() >= deadline:
            expired = call.timeout.expired_error(call.request, "before the attempt could start")
            raise call.refused("deadline", expired)
        try:
            return call.host.breaker.admit()
        except CircuitOpenError as refusal:
            raise call.refused("breaker", refusal) from None

    def _stamp_time_left(self, call: _Call) -> None:
        """Tell the dependency how long this attempt may take (the deadline header)."""
        header = self._deadline_header
        if header is not None:
            time_left = call.timeout.attempt_time_left(call.deadline)
            if time_left is not None:
                header.set(call.request.headers, format_time_left(time_left))

    def _transport_for(self, call: _Call) -> tuple[httpx.AsyncBaseTransport, PoolLease | None]:
        """The dependency's own pool for the URL's route (leased), or the user's transport."""
        route = self._route_for(call.request.url)
        lease = None
        if isinstance(route, Route):
            lease = self._pools.lease(route)
            transport = lease.transport
        else:
            transport = route  # the user's own transport or mount, used as given
        if call.traced:
            transport = self._telemetry.attempt_transport(transport)
        return transport, lease

    def _record_error(
        self,
        error: BaseException,
        host: HostState,
        permit: Permit,
        lease: PoolLease | None,
        guard: AttemptGuard | None,
    ) -> None:
        """What an attempt that raised tells the breaker and the pool; the lease ends."""
        breaker = host.breaker
        if not isinstance(error, Exception):  # cancelled: the caller gave up
            breaker.record_ignored(permit)  # which says nothing of the dependency
            if lease is not None:
                lease.interrupted()
        elif _is_local(error) or (
            # Never sent, or cut short by a deadline before the dependency had its
            # time: the caller's impatience, or time spent waiting on our side.
            isinstance(error, DeadlineExceededError) and (guard is None or guard.cut_short)
        ):
            breaker.record_ignored(permit)
            if lease is not None and _waited_for_connection(error):
                lease.pool_timed_out()
        else:
            breaker.record_failure(permit)
        if lease is not None:
            lease.release()

    def _record_response(
        self, response: httpx.Response, host: HostState, permit: Permit, sent_at: float
    ) -> None:
        """What a response tells the host's breaker, and a 429 its throttle."""
        status = response.status_code
        if status >= 500:
            host.breaker.record_failure(permit)
        elif status == 429:
            # Healthy, and we are over our quota: not the breaker's business (it
            # would refuse calls the quota admits). The throttle answers a 429.
            host.breaker.record_ignored(permit)
            host.throttle.throttled(sent_at, retry_after_seconds(response))
        else:
            host.breaker.record_success(permit)

    def _wrap_body(
        self,
        response: httpx.Response,
        call: _Call,
        lease: PoolLease | None,
        read_bound: float,
    ) -> httpx.Response:
        """Bound the body's reads by the deadline; closing it ends the pool lease."""
        if response.is_closed:
            # Built from bytes (MockTransport, ASGI apps, caches): already read and
            # closed, so no one will ever close it again. It holds no connection.
            if lease is not None:
                lease.release()
            return response
        stream = response.stream
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError(
                f"the transport returned a synchronous body stream ({type(stream).__name__})"
            )
        response.stream = DeadlineBody(
            stream,
            deadline=call.deadline,
            on_close=None if lease is None else lease.release,
            strategy=call.timeout,
            request=call.request,
            # httpx's own transport reads its timeouts live; another factory's, or
            # the user's own transport, may ignore them.
            read_bound=read_bound if lease is not None and self._pools_are_httpx else None,
        )
        return response

    def log_rejection(
        self, reason: str, error: BaseException | str, request: httpx.Request
    ) -> None:
        """Log that an attempt or a retry was refused (rate-limited per reason)."""
        header = self._telemetry.request_id_header
        request_id = None if header is None else header.get(request.headers)
        self._rejections.rejected(reason, error, request_id)

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
        """Open only when every host the dependency tracks is open."""
        return self._hosts.state

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
        hosts = self._hosts.health()
        return {
            "kind": "named" if self.named else "host",
            "critical": self.critical,
            # Usable unless every host's breaker is open: half-open is already probing.
            "usable": hosts["breaker"]["state"] != "open",
            "in_flight": self._bulkhead.in_flight,
            "queued": self._bulkhead.queued,
            "max_concurrent": bulkhead.max_concurrent,
            "max_queue": bulkhead.max_queue,
            "retry": {
                "budget_left": self._retry.budget.available(),
                "retries_by_reason": dict(self._retries_by_reason),
            },
            "rate_limit": self._rate_limit.health(),
            **hosts,  # breaker and throttle: the host's, or a summary and "hosts"
            "pool": {
                "max_connections": limits.max_connections,
                "max_keepalive": limits.max_keepalive_connections,
                "open_pools": self._pools.open,
                "replaced": self._pools.replaced,
            },
            "timeout": self.policy.timeout.model_dump(),
        }


class _Route:
    """The timeouts and retries of one route (its breaker, bulkhead and rate limit
    are the dependency's)."""

    __slots__ = ("retry", "timeout")

    def __init__(
        self,
        dependency: str,
        policy: RoutePolicy,
        budget: RetryBudget,
        retries_by_reason: dict[str, int],
    ) -> None:
        self.timeout = TimeoutStrategy(dependency, policy.timeout)
        self.retry = RetryStrategy(policy.retry, budget, retries_by_reason)


class _Call:
    """One logical call as the pipeline's steps see it; the retry loop's observer too.

    Holds the request, the call's deadline and its telemetry (None when nothing
    would record it: each report below is then a branch and no more).
    """

    __slots__ = (
        "_pipeline",
        "deadline",
        "host",
        "request",
        "retry",
        "telemetry",
        "timeout",
        "traced",
    )

    def __init__(
        self,
        pipeline: DependencyPipeline,
        request: httpx.Request,
        host: HostState,
        timeout: TimeoutStrategy,
        retry: RetryStrategy,
        telemetry: CallTelemetry | None,
    ) -> None:
        self._pipeline = pipeline
        self.request = request
        self.host = host
        self.timeout = timeout
        self.retry = retry
        self.deadline = timeout.call_deadline()
        self.telemetry = telemetry
        self.traced = telemetry is not None and telemetry.span is not None
        if telemetry is not None:
            telemetry.enter()

    def leave(self) -> None:
        """The call's steps are over (its body may still be read)."""
        if self.telemetry is not None:
            self.telemetry.exit()

    def end(self, result: httpx.Response | BaseException) -> None:
        if self.telemetry is not None:
            self.telemetry.end(result)

    def refused(self, reason: str, error: ResilienceError) -> ResilienceError:
        """Report an attempt refused before it was sent; return the error to raise."""
        if self.telemetry is not None:
            self.telemetry.rejected(reason, str(error))
        self._pipeline.log_rejection(reason, error, self.request)
        return error

    def attempt_started(self) -> float:
        return 0.0 if self.telemetry is None else self.telemetry.attempt_started()

    def attempt_ended(self, started: float, result: httpx.Response | BaseException) -> None:
        if self.telemetry is not None:
            self.telemetry.attempt_ended(started, result)

    # -- RetryObserver -----------------------------------------------------------------

    def breaker_open(self) -> bool:
        return self.host.breaker.state == "open"

    def retrying(self, reason: str, wait: float) -> None:
        if self.telemetry is not None:
            self.telemetry.retrying(reason, wait)

    def retry_refused(self, reason: str, message: str) -> None:
        if self.telemetry is not None:
            self.telemetry.rejected(reason, message)
        self._pipeline.log_rejection(reason, f"retry not made: {message}", self.request)


def _waited_for_connection(error: BaseException) -> bool:
    """The pool had no connection for the call in time (maybe cut short by the deadline)."""
    return isinstance(error, httpx.PoolTimeout) or isinstance(error.__cause__, httpx.PoolTimeout)


def _is_local(error: BaseException) -> bool:
    """A wait on our side ran out, or we refused: not the dependency's doing."""
    if _waited_for_connection(error):
        return True
    return isinstance(error, ResilienceError) and not isinstance(error, DeadlineExceededError)
