"""OpenTelemetry for the client: a span per logical call, a CLIENT span per attempt, metrics.

Traces. Each call through a dependency's pipeline is one INTERNAL span,
``"{method} {dependency}"``, from admission to the body's close, with events for
what the layers did to it (``resilient_client.retry``, ``resilient_client.rejected``,
``resilient_client.deadline_exceeded``). Each attempt under it is a CLIENT span
made by OpenTelemetry's own httpx instrumentation, whose transport wraps the
dependency's pool *inside* the retry loop: every attempt gets its own span and
its own ``traceparent``, all children of the call's span. Our hooks add what the
instrumentation leaves out: the stable HTTP attributes whatever the
``OTEL_SEMCONV_STABILITY_OPT_IN`` setting, ``http.request.resend_count``,
``error.type`` for errors, the dependency's name, and query strings redacted.

Metrics: see :data:`METRICS` (names, units and attributes; docs/telemetry.md).

Cost. With only opentelemetry-api installed (or no provider set) nothing here
runs per call but a clock read: no span, no instrument, no wrapper. An
incoming trace context is still passed on (``inject`` only runs when the
context holds something). The global providers are looked up again at most
once a second, so an SDK configured after the client was made is picked up
within a second.
"""

from __future__ import annotations

import contextvars
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.instrumentation.httpx import (
    AsyncOpenTelemetryTransport,
    HTTPXClientInstrumentor,
    RequestInfo,
    ResponseInfo,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

from ._correlation import HeaderSlot, bound_or_new_request_id
from ._exceptions import DeadlineExceededError
from ._settings import TelemetrySettings
from ._version import __version__

__all__ = ["METRICS", "CallTelemetry", "ObservedDependency", "Telemetry", "redacted_url"]

SCOPE = "resilient_client"
DEPENDENCY = "resilient_client.dependency"
OUTCOME = "resilient_client.outcome"
REASON = "resilient_client.reason"

# name: (instrument, unit, description, attributes)
METRICS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "resilient_client.call.duration": (
        "histogram",
        "s",
        "Logical calls, from admission to the body's close (retries and waits included)",
        (DEPENDENCY, "http.request.method", OUTCOME),
    ),
    "resilient_client.attempt.duration": (
        "histogram",
        "s",
        "Attempts sent, until response headers or an error (errors included)",
        (DEPENDENCY, "http.request.method", OUTCOME),
    ),
    "resilient_client.attempts": (
        "counter",
        "{attempt}",
        "Attempts sent, by outcome",
        (DEPENDENCY, "http.request.method", OUTCOME),
    ),
    "resilient_client.retries": (
        "counter",
        "{retry}",
        "Retries scheduled, by the reason for retrying",
        (DEPENDENCY, REASON),
    ),
    "resilient_client.rejections": (
        "counter",
        "{attempt}",
        "Attempts the client refused to send: breaker, bulkhead, rate_limit, "
        "retry_budget, deadline",
        (DEPENDENCY, REASON),
    ),
    "resilient_client.calls.in_flight": (
        "observable up-down counter",
        "{call}",
        "Calls holding a bulkhead permit",
        (DEPENDENCY,),
    ),
    "resilient_client.calls.queued": (
        "observable up-down counter",
        "{call}",
        "Calls waiting in the bulkhead queue",
        (DEPENDENCY,),
    ),
    "resilient_client.breaker.state": (
        "observable gauge",
        "1",
        "Circuit breaker state: 0 closed, 1 half-open, 2 open",
        (DEPENDENCY,),
    ),
}


class ObservedDependency(Protocol):
    """What the observable instruments read of a dependency (a pipeline, in practice)."""

    @property
    def name(self) -> str: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def breaker_state(self) -> str: ...


_BREAKER_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}
# Buckets for seconds, as the HTTP semantic conventions advise for client durations.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


# The call whose attempt is running: the attempt span's hook reads it.
_current_call: contextvars.ContextVar[CallTelemetry | None] = contextvars.ContextVar(
    "resilient_client_call", default=None
)


def _records(provider: object) -> bool:
    """Whether a provider records anything: the API's own proxy and no-op ones don't."""
    module = type(provider).__module__
    return not module.startswith(("opentelemetry.trace", "opentelemetry.metrics"))


class _GlobalProviders:
    """Whether the global tracer and meter providers record, looked up at most once a second.

    Looking them up costs about 6 µs a call (an environment read each, while no
    SDK is set: 0.3% of a request, benchmarks/shortcuts.py, results of
    2026-12-08), for an answer that changes once, when an SDK is set up.
    """

    RECHECK_EVERY = 1.0

    def __init__(self) -> None:
        self.next_check = 0.0  # when refresh() is due (the caller checks, saving a call)
        self.tracing = False
        self.metering = False

    def refresh(self, now: float) -> None:
        self.next_check = now + self.RECHECK_EVERY
        self.tracing = _records(trace.get_tracer_provider())
        self.metering = _records(metrics.get_meter_provider())


_global_providers = _GlobalProviders()


def redacted_url(url: httpx.URL, redact_query: bool) -> str:
    """The URL for telemetry: never credentials; query values replaced unless told otherwise."""
    url = url.copy_with(username=None, password=None) if url.userinfo else url
    if not redact_query or not url.query:
        return str(url)
    names = [quote(name, safe="") for name, _ in url.params.multi_items()]
    query = "&".join(f"{name}=REDACTED" for name in names)
    return str(url.copy_with(query=query.encode("ascii")))


def outcome_of(result: httpx.Response | BaseException) -> str:
    """A low-cardinality label for how an attempt or a call ended."""
    if isinstance(result, httpx.Response):
        status = result.status_code
        if status < 400:
            return "success"
        if status == 429:
            return "throttled"
        return "client_error" if status < 500 else "server_error"
    if isinstance(result, DeadlineExceededError):
        return "deadline_exceeded"
    if isinstance(result, httpx.TimeoutException):
        return "timeout"
    if isinstance(result, httpx.ConnectError):
        return "connect_error"
    if isinstance(result, httpx.TransportError):
        return "transport_error"
    # Not an Exception: CancelledError (or KeyboardInterrupt) ended it.
    return "error" if isinstance(result, Exception) else "cancelled"


def _described(name: str) -> dict[str, str]:
    """An instrument's name, unit and description, as :data:`METRICS` gives them."""
    _, unit, description, _ = METRICS[name]
    return {"name": name, "unit": unit, "description": description}


class _Instruments:
    """The instruments of one meter provider, shared by every client that uses it.

    Shared because an SDK keeps the first instrument registered under a name and
    drops a second one's callbacks: per-client observables would go silent.
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None) -> None:
        meter = metrics.get_meter(SCOPE, __version__, meter_provider)
        self.call_duration = meter.create_histogram(
            **_described("resilient_client.call.duration"),
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.attempt_duration = meter.create_histogram(
            **_described("resilient_client.attempt.duration"),
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.attempts = meter.create_counter(**_described("resilient_client.attempts"))
        self.retries = meter.create_counter(**_described("resilient_client.retries"))
        self.rejections = meter.create_counter(**_described("resilient_client.rejections"))
        self.clients: weakref.WeakSet[Telemetry] = weakref.WeakSet()
        meter.create_observable_up_down_counter(
            **_described("resilient_client.calls.in_flight"),
            callbacks=[self._observe("in_flight")],
        )
        meter.create_observable_up_down_counter(
            **_described("resilient_client.calls.queued"),
            callbacks=[self._observe("queued")],
        )
        meter.create_observable_gauge(
            **_described("resilient_client.breaker.state"),
            callbacks=[self._observe("breaker")],
        )

    def _observe(
        self, what: str
    ) -> Callable[[metrics.CallbackOptions], Iterable[metrics.Observation]]:
        def callback(options: metrics.CallbackOptions) -> Iterator[metrics.Observation]:
            for client in list(self.clients):
                for dependency in client.dependencies():
                    if what == "breaker":
                        value = _BREAKER_STATE_VALUE[dependency.breaker_state]
                    elif what == "in_flight":
                        value = dependency.in_flight
                    else:
                        value = dependency.queued
                    yield metrics.Observation(value, {DEPENDENCY: dependency.name})

        return callback


_global_instruments: _Instruments | None = None
_instruments_by_provider: weakref.WeakKeyDictionary[metrics.MeterProvider, _Instruments] = (
    weakref.WeakKeyDictionary()
)


def _instruments_for(meter_provider: metrics.MeterProvider | None) -> _Instruments:
    global _global_instruments
    if meter_provider is None:
        # Instruments of the global proxy meter start recording once an SDK is set.
        if _global_instruments is None:
            _global_instruments = _Instruments(None)
        return _global_instruments
    instruments = _instruments_by_provider.get(meter_provider)
    if instruments is None:
        instruments = _instruments_by_provider[meter_provider] = _Instruments(meter_provider)
    return instruments


class Telemetry:
    """One client's telemetry: its tracer, the shared instruments, per-attempt span transports."""

    def __init__(
        self,
        settings: TelemetrySettings,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.settings = settings
        # What the observable instruments report on: nothing until observe().
        self.dependencies: Callable[[], Iterable[ObservedDependency]] = tuple
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._tracer = trace.get_tracer(SCOPE, __version__, tracer_provider)
        self.instruments = _instruments_for(meter_provider)
        name = settings.request_id_header
        self.request_id_header = None if name is None else HeaderSlot(name)
        # A provider given to the client is used as given; the global ones may change.
        self._tracer_records = None if tracer_provider is None else _records(tracer_provider)
        self._meter_records = None if meter_provider is None else _records(meter_provider)
        self._attempt_transports: weakref.WeakKeyDictionary[
            httpx.AsyncBaseTransport, httpx.AsyncBaseTransport
        ] = weakref.WeakKeyDictionary()

    def observe(self, dependencies: Callable[[], Iterable[ObservedDependency]]) -> None:
        """Report these dependencies' state in the observable instruments.

        ``dependencies`` is called from a metric reader's thread: it must return
        a snapshot, not a view of a table the event loop may be changing.
        """
        self.dependencies = dependencies
        self.instruments.clients.add(self)

    def close(self) -> None:
        """The client is closed: its dependencies leave the observed metrics."""
        self.instruments.clients.discard(self)

    # -- per call --------------------------------------------------------------------

    def start_call(self, dependency: str, request: httpx.Request) -> CallTelemetry | None:
        """Stamp the call's request id; its telemetry, or None when nothing would record it."""
        header = self.request_id_header
        if header is not None:
            header.set_default(request.headers, bound_or_new_request_id)
        providers = _global_providers
        now = time.monotonic()
        if now >= providers.next_check:
            providers.refresh(now)
        tracing = self.settings.traces and (
            providers.tracing if self._tracer_records is None else self._tracer_records
        )
        metering = self.settings.metrics and (
            providers.metering if self._meter_records is None else self._meter_records
        )
        if not tracing:
            # No span of ours: still pass on the trace context we are in (an
            # incoming one, or a span of the service's own), if any.
            if otel_context.get_current():
                propagate.inject(request.headers)
            if not metering:
                return None
        return CallTelemetry(self, dependency, request, tracing=tracing, metering=metering)

    def start_span(self, name: str, attributes: dict[str, Any]) -> trace.Span:
        return self._tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes)

    # -- per attempt -----------------------------------------------------------------

    def attempt_transport(self, transport: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        """``transport`` wrapped so that each request through it is a CLIENT span."""
        # Already a span per attempt: the user's own instrumented transport, or
        # httpx's transports instrumented globally by HTTPXClientInstrumentor.
        if isinstance(transport, AsyncOpenTelemetryTransport) or (
            _httpx_instrumented_globally() and isinstance(transport, httpx.AsyncHTTPTransport)
        ):
            return transport
        wrapped = self._attempt_transports.get(transport)
        if wrapped is None:
            wrapped = AsyncOpenTelemetryTransport(
                _ErrorTypeOnSpan(transport),
                tracer_provider=self._tracer_provider,
                meter_provider=self._meter_provider,
                request_hook=self._attempt_request_hook,
                response_hook=_attempt_response_hook,
            )
            self._attempt_transports[transport] = wrapped
        return wrapped

    async def _attempt_request_hook(self, span: trace.Span, info: RequestInfo) -> None:
        if not span.is_recording():
            return
        call = _current_call.get()
        url = info.url if isinstance(info.url, httpx.URL) else httpx.URL(str(info.url))
        # The attempt sends the call's request: its redacted URL is the call span's.
        full = (
            call.url_full
            if call is not None and call.url_full is not None
            else redacted_url(url, self.settings.redact_query)
        )
        method = info.method.decode() if isinstance(info.method, bytes) else str(info.method)
        span.set_attribute("http.request.method", method)
        span.set_attribute("url.full", full)
        span.set_attribute("server.address", url.host)
        if url.port is not None:
            span.set_attribute("server.port", url.port)
        existing = getattr(span, "attributes", None) or {}
        if "http.url" in existing:  # the old conventions' copy of the URL, query and all
            span.set_attribute("http.url", full)
        if call is not None:
            span.set_attribute(DEPENDENCY, call.dependency)
            if call.attempts > 1:
                span.set_attribute("http.request.resend_count", call.attempts - 1)


async def _attempt_response_hook(
    span: trace.Span, info: RequestInfo, response: ResponseInfo
) -> None:
    if not span.is_recording():
        return
    status = response.status_code
    span.set_attribute("http.response.status_code", status)
    if status >= 400:
        span.set_attribute("error.type", str(status))
    version = response.extensions.get("http_version") if response.extensions else None
    if isinstance(version, bytes) and version.startswith(b"HTTP/"):
        span.set_attribute("network.protocol.version", version[5:].decode())


class _ErrorTypeOnSpan(httpx.AsyncBaseTransport):
    """Innermost: names the error on the attempt's span (the old conventions don't)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except Exception as error:
            span = trace.get_current_span()
            if span.is_recording():
                span.set_attribute("error.type", type(error).__qualname__)
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


def _httpx_instrumented_globally() -> bool:
    return bool(HTTPXClientInstrumentor().is_instrumented_by_opentelemetry)


class CallTelemetry:
    """The telemetry of one logical call: its span, its attempts, how it ended."""

    __slots__ = (
        "_call_token",
        "_context_token",
        "_ended",
        "_metric_attributes",
        "_started",
        "_telemetry",
        "attempts",
        "dependency",
        "span",
        "url_full",
    )

    def __init__(
        self,
        telemetry: Telemetry,
        dependency: str,
        request: httpx.Request,
        *,
        tracing: bool,
        metering: bool,
    ) -> None:
        self._telemetry = telemetry
        self.dependency = dependency
        self.attempts = 0
        self._ended = False
        self._started = time.perf_counter()
        self._metric_attributes: dict[str, str] | None = (
            {DEPENDENCY: dependency, "http.request.method": request.method} if metering else None
        )
        self.span: trace.Span | None = None
        self.url_full: str | None = None
        self._context_token: object = None
        self._call_token: contextvars.Token[CallTelemetry | None] | None = None
        if tracing:
            url = request.url
            self.url_full = redacted_url(url, telemetry.settings.redact_query)
            attributes: dict[str, Any] = {
                "http.request.method": request.method,
                "url.full": self.url_full,
                "server.address": url.host,
                DEPENDENCY: dependency,
            }
            if url.port is not None:
                attributes["server.port"] = url.port
            self.span = telemetry.start_span(f"{request.method} {dependency}", attributes)

    def enter(self) -> None:
        """Make the call current: its span the parent of its attempts' spans."""
        if self.span is not None:
            self._context_token = otel_context.attach(trace.set_span_in_context(self.span))
        self._call_token = _current_call.set(self)

    def exit(self) -> None:
        if self._call_token is not None:
            _current_call.reset(self._call_token)
            self._call_token = None
        if self._context_token is not None:
            otel_context.detach(self._context_token)  # type: ignore[arg-type]
            self._context_token = None

    def attempt_started(self) -> float:
        self.attempts += 1
        return time.perf_counter()

    def attempt_ended(self, started: float, result: httpx.Response | BaseException) -> None:
        base = self._metric_attributes
        if base is None:
            return
        attributes = {**base, OUTCOME: outcome_of(result)}
        instruments = self._telemetry.instruments
        instruments.attempts.add(1, attributes)
        instruments.attempt_duration.record(time.perf_counter() - started, attributes)

    def retrying(self, reason: str, wait: float) -> None:
        """A retry is scheduled after ``wait`` seconds."""
        if self._metric_attributes is not None:
            self._telemetry.instruments.retries.add(
                1, {DEPENDENCY: self.dependency, REASON: reason}
            )
        if self.span is not None:
            self.span.add_event(
                "resilient_client.retry",
                {
                    REASON: reason,
                    "resilient_client.retry.wait": round(wait, 6),
                    "http.request.resend_count": self.attempts,
                },
            )

    def rejected(self, reason: str, message: str) -> None:
        """An attempt was refused before it was sent (see METRICS for the reasons)."""
        if self._metric_attributes is not None:
            self._telemetry.instruments.rejections.add(
                1, {DEPENDENCY: self.dependency, REASON: reason}
            )
        if self.span is not None:
            self.span.add_event(
                "resilient_client.rejected", {REASON: reason, "exception.message": message}
            )

    def end(self, result: httpx.Response | BaseException) -> None:
        """The call is over (its body closed, or it failed); only the first end counts."""
        if self._ended:
            return
        self._ended = True
        outcome = outcome_of(result)
        if self._metric_attributes is not None:
            self._telemetry.instruments.call_duration.record(
                time.perf_counter() - self._started, {**self._metric_attributes, OUTCOME: outcome}
            )
        span = self.span
        if span is None:
            return
        span.set_attribute(OUTCOME, outcome)
        span.set_attribute("resilient_client.attempts", self.attempts)
        if isinstance(result, httpx.Response):
            status = result.status_code
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR))
        else:
            if isinstance(result, DeadlineExceededError):
                span.add_event(
                    "resilient_client.deadline_exceeded", {"exception.message": str(result)}
                )
            span.set_attribute("error.type", type(result).__qualname__)
            span.record_exception(result)
            span.set_status(Status(StatusCode.ERROR, f"{type(result).__name__}: {result}"))
        span.end()
