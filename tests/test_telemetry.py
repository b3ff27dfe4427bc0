"""Trace context on every attempt, deadline and request id downstream, metrics, redaction, logs.

Spans and metrics go to the OpenTelemetry SDK's in-memory exporters through
providers given to the client, so no test touches the global providers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

import resilient_client as rc
from resilient_client.testing._upstream import RecordedRequest, Upstream

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_resilience_env")]


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def meter() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


def _settings(**policy: Any) -> dict[str, Any]:
    retry = {"attempts": 3, "backoff_base": 0.001, "backoff_max": 0.002}
    retry.update(policy.pop("retry", {}))
    default: dict[str, Any] = {
        "retry": retry,
        "breaker": {"consecutive_failures": None, "minimum_calls": 1000},
    }
    default.update(policy)
    return {"default": default}


def _requests(upstream: Upstream) -> list[RecordedRequest]:
    return [r for r in upstream.recent if not r.target.startswith("/__")]


def _traceparent(request: RecordedRequest) -> tuple[str, str]:
    version, trace_id, span_id, flags = request.headers["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & 1  # sampled
    return trace_id, span_id


def _by_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.kind is kind]


async def test_every_attempt_is_its_own_client_span_with_its_own_traceparent(
    upstream: Upstream, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    async with rc.AsyncClient(settings=_settings(), tracer_provider=provider) as client:
        response = await client.get(upstream.url(0, "/?status=503"))
    assert response.status_code == 503
    sent = _requests(upstream)
    assert len(sent) == 3
    parents = [_traceparent(request) for request in sent]
    assert len({trace_id for trace_id, _ in parents}) == 1  # one trace
    assert len({span_id for _, span_id in parents}) == 3  # a span per attempt

    (call,) = _by_kind(exporter, SpanKind.INTERNAL)
    attempts = sorted(_by_kind(exporter, SpanKind.CLIENT), key=lambda span: span.start_time or 0)
    assert len(attempts) == 3
    assert call.context is not None
    for attempt, (trace_id, span_id) in zip(attempts, parents, strict=True):
        assert attempt.context is not None
        assert attempt.parent is not None
        assert format(attempt.context.trace_id, "032x") == trace_id
        assert format(attempt.context.span_id, "016x") == span_id  # the header is its own span
        assert attempt.parent.span_id == call.context.span_id
        assert attempt.attributes is not None
        assert attempt.attributes["http.response.status_code"] == 503
        assert attempt.attributes["resilient_client.dependency"] == f"127.0.0.1:{upstream.ports[0]}"
    resends = [(a.attributes or {}).get("http.request.resend_count") for a in attempts]
    assert resends == [None, 1, 2]

    assert call.name == f"GET 127.0.0.1:{upstream.ports[0]}"
    assert call.attributes is not None
    assert call.attributes["http.response.status_code"] == 503
    assert call.attributes["resilient_client.attempts"] == 3
    retries = [event for event in call.events if event.name == "resilient_client.retry"]
    assert [(e.attributes or {})["resilient_client.reason"] for e in retries] == ["status 503"] * 2


async def test_the_call_span_is_a_child_of_the_callers_span(
    upstream: Upstream, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("test")
    async with rc.AsyncClient(settings=_settings(), tracer_provider=provider) as client:
        with tracer.start_as_current_span("handler") as handler:
            await client.get(upstream.url(0))
    (call,) = [s for s in _by_kind(exporter, SpanKind.INTERNAL) if s.name != "handler"]
    assert call.parent is not None
    assert call.parent.span_id == handler.get_span_context().span_id
    # The call's span ends when its body is closed, after the attempt's.
    (attempt,) = _by_kind(exporter, SpanKind.CLIENT)
    assert (call.end_time or 0) >= (attempt.end_time or 0)


async def test_with_the_api_alone_an_incoming_trace_context_passes_through_unchanged(
    upstream: Upstream,
) -> None:
    # No provider given and none set globally: the API's no-op tracer.
    incoming = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    async with rc.AsyncClient(settings=_settings()) as client:
        await client.get(upstream.url(0))  # outside any trace: nothing to pass on
        token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(incoming)))
        try:
            await client.get(upstream.url(0, "/?status=503"))
        finally:
            otel_context.detach(token)
    first, *retried = _requests(upstream)
    assert "traceparent" not in first.headers
    assert len(retried) == 3
    expected = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert {request.headers["traceparent"] for request in retried} == {expected}


async def test_query_strings_and_credentials_never_reach_spans_or_logs(
    upstream: Upstream,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, exporter = spans
    caplog.set_level(logging.DEBUG, logger="resilient_client")
    settings = _settings(breaker={"consecutive_failures": 1})
    url = upstream.url(0, "/?status=500&token=s3cret-token").replace(
        "http://", "http://user:s3cret-password@"
    )
    async with rc.AsyncClient(settings=settings, tracer_provider=provider) as client:
        await client.get(
            url, headers={"Authorization": "Bearer s3cret-bearer", "Cookie": "session=s3cret-c"}
        )
        with contextlib.suppress(rc.CircuitOpenError):
            await client.get(url)  # rejected by the open breaker: logged
    exported = exporter.get_finished_spans()
    assert exported
    text = repr(
        [(s.name, dict(s.attributes or {}), [e.attributes for e in s.events]) for s in exported]
    )
    text += "\n".join(record.getMessage() + repr(record.__dict__) for record in caplog.records)
    assert "s3cret" not in text
    full = {(s.attributes or {}).get("url.full") for s in exported}
    assert full == {f"http://127.0.0.1:{upstream.ports[0]}/?status=REDACTED&token=REDACTED"}
    assert any(getattr(r, "event", None) == "rejected" for r in caplog.records)


async def test_query_strings_are_kept_when_redaction_is_switched_off(
    upstream: Upstream, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    settings = {**_settings(), "telemetry": {"redact_query": False}}
    async with rc.AsyncClient(settings=settings, tracer_provider=provider) as client:
        await client.get(upstream.url(0, "/?page=2"))
    assert {(s.attributes or {}).get("url.full") for s in exporter.get_finished_spans()} == {
        f"http://127.0.0.1:{upstream.ports[0]}/?page=2"
    }


async def test_every_attempt_carries_the_time_left_and_one_request_id(upstream: Upstream) -> None:
    settings = _settings(retry={"backoff_base": 0.05, "backoff_max": 0.05})
    async with rc.AsyncClient(settings=settings) as client:
        with rc.deadline(2.0):
            await client.get(upstream.url(0, "/?status=503"))
    sent = _requests(upstream)
    assert len(sent) == 3
    left = [int(request.headers["x-request-timeout-ms"]) for request in sent]
    assert 1900 <= left[0] <= 2000
    assert left[0] > left[1] > left[2] > 0  # it shrinks as the call goes on
    ids = {request.headers["x-request-id"] for request in sent}
    assert len(ids) == 1
    (request_id,) = ids
    assert len(request_id) == 32
    assert int(request_id, 16) >= 0


async def test_the_time_left_is_bounded_by_the_attempt_timeout(upstream: Upstream) -> None:
    settings = _settings(timeout={"total": 30, "attempt": 0.8})
    async with rc.AsyncClient(settings=settings) as client:
        await client.get(upstream.url(0))
    (request,) = _requests(upstream)
    assert 700 <= int(request.headers["x-request-timeout-ms"]) <= 800


async def test_headers_follow_the_settings_and_the_bound_request_id(upstream: Upstream) -> None:
    settings = {
        **_settings(timeout={"total": None, "attempt": None}),
        "telemetry": {"deadline_header": "Grpc-Ish-Timeout", "request_id_header": "X-Corr"},
    }
    async with rc.AsyncClient(settings=settings) as client:
        await client.get(upstream.url(0))  # no deadline at all: no deadline header
        with rc.request_id("order-42"), rc.deadline(1.0):
            await client.get(upstream.url(0))
        await client.get(upstream.url(0), headers={"X-Corr": "given-by-caller"})
    first, second, third = _requests(upstream)
    assert "grpc-ish-timeout" not in first.headers
    assert "x-request-timeout-ms" not in first.headers
    assert 0 < int(second.headers["grpc-ish-timeout"]) <= 1000
    assert second.headers["x-corr"] == "order-42"
    assert third.headers["x-corr"] == "given-by-caller"
    assert "x-request-id" not in second.headers
    assert len({first.headers["x-corr"], second.headers["x-corr"]}) == 2


async def test_propagation_headers_can_be_switched_off(upstream: Upstream) -> None:
    settings = {
        **_settings(),
        "telemetry": {"deadline_header": None, "request_id_header": None},
    }
    async with rc.AsyncClient(settings=settings) as client:
        await client.get(upstream.url(0))
    (request,) = _requests(upstream)
    assert "x-request-timeout-ms" not in request.headers
    assert "x-request-id" not in request.headers


def _points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    data = reader.get_metrics_data()
    found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != "resilient_client":
                continue
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = getattr(point, "count", None)
                    found.setdefault(metric.name, []).append((dict(point.attributes or {}), value))
    return found


def _total(points: list[tuple[dict[str, Any], Any]], **attributes: Any) -> Any:
    return sum(
        value
        for point, value in points
        if all(point.get(f"resilient_client.{k}", point.get(k)) == v for k, v in attributes.items())
    )


async def test_metrics_count_attempts_retries_and_rejections(
    upstream: Upstream, meter: tuple[MeterProvider, InMemoryMetricReader]
) -> None:
    provider, reader = meter
    settings = _settings(
        breaker={"consecutive_failures": 3, "open_for": 30},
        bulkhead={"max_concurrent": 1, "max_queue": 0},
    )
    closed = _closed_port()
    async with rc.AsyncClient(settings=settings, meter_provider=provider) as client:
        await client.get(upstream.url(0))
        await client.get(upstream.url(0, "/?status=503"))  # 3 attempts, 2 retries: opens
        with pytest.raises(rc.CircuitOpenError):
            await client.get(upstream.url(0))
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{closed}/")
        async with client.stream("GET", upstream.url(1, "/?drip=0.05&size=4")):
            with pytest.raises(rc.BulkheadFullError):
                await client.get(upstream.url(1))
            in_flight = _points(reader)["resilient_client.calls.in_flight"]
            assert _total(in_flight, dependency=_dep(upstream, 1)) == 1
        points = _points(reader)  # observed while the client is open
    # A closed client's dependencies are no longer observed.
    assert "resilient_client.breaker.state" not in _points(reader)
    dep = _dep(upstream, 0)
    attempts = points["resilient_client.attempts"]
    assert _total(attempts, dependency=dep, outcome="success") == 1
    assert _total(attempts, dependency=dep, outcome="server_error") == 3
    assert _total(points["resilient_client.retries"], dependency=dep, reason="status 503") == 2
    rejections = points["resilient_client.rejections"]
    assert _total(rejections, dependency=dep, reason="breaker") == 1
    assert _total(rejections, dependency=_dep(upstream, 1), reason="bulkhead") == 1
    # Attempts that end in an error are timed too.
    closed_dep = f"127.0.0.1:{closed}"
    assert _total(points["resilient_client.attempt.duration"], dependency=closed_dep) == 3
    assert _total(attempts, dependency=closed_dep, outcome="connect_error") == 3
    calls = points["resilient_client.call.duration"]
    assert _total(calls, dependency=dep) == 3
    assert _total(calls, dependency=dep, outcome="server_error") == 1
    states = points["resilient_client.breaker.state"]
    assert _total(states, dependency=dep) == 2  # open
    assert _total(points["resilient_client.calls.queued"], dependency=dep) == 0


def _dep(upstream: Upstream, index: int) -> str:
    return f"127.0.0.1:{upstream.ports[index]}"


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_rejections_and_deadline_expiry_are_events_on_the_call_span(
    upstream: Upstream, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    settings = _settings(breaker={"consecutive_failures": 1, "open_for": 30})
    async with rc.AsyncClient(settings=settings, tracer_provider=provider) as client:
        with rc.deadline(0.2), pytest.raises(rc.DeadlineExceededError):
            await client.get(upstream.url(1, "/?hang=1"))
        await client.get(upstream.url(0, "/?status=500"))
        with pytest.raises(rc.CircuitOpenError):
            await client.get(upstream.url(0))
    expired, failed, rejected = sorted(
        _by_kind(exporter, SpanKind.INTERNAL), key=lambda span: span.start_time or 0
    )
    assert [e.name for e in expired.events][:1] == ["resilient_client.deadline_exceeded"]
    assert (expired.attributes or {})["error.type"] == "DeadlineExceededError"
    assert not expired.status.is_ok
    assert (failed.attributes or {})["error.type"] == "500"
    (event,) = [e for e in rejected.events if e.name == "resilient_client.rejected"]
    assert (event.attributes or {})["resilient_client.reason"] == "breaker"
    assert (rejected.attributes or {})["error.type"] == "CircuitOpenError"


async def test_log_records_carry_trace_span_request_id_and_dependency(
    upstream: Upstream,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, _ = spans
    caplog.set_level(logging.WARNING, logger="resilient_client")
    settings = _settings(breaker={"consecutive_failures": 1, "open_for": 30}, retry={"attempts": 1})
    async with rc.AsyncClient(settings=settings, tracer_provider=provider) as client:
        with rc.request_id("req-7"):
            await client.get(upstream.url(0, "/?status=500"))
            with pytest.raises(rc.CircuitOpenError):
                await client.get(upstream.url(0))
    records = [r for r in caplog.records if r.name == "resilient_client"]
    assert {getattr(r, "event", None) for r in records} == {"breaker_state", "rejected"}
    for record in records:
        assert getattr(record, "dependency", None) == _dep(upstream, 0)
        assert getattr(record, "request_id", None) == "req-7"
        assert len(getattr(record, "trace_id", "") or "") == 32
        assert len(getattr(record, "span_id", "") or "") == 16


def test_the_context_filter_adds_the_fields_to_any_record() -> None:
    record = logging.LogRecord("svc", logging.INFO, __file__, 1, "hello", None, None)
    with rc.request_id("abc"):
        assert rc.ContextFilter().filter(record)
    assert record.__dict__["request_id"] == "abc"
    assert record.__dict__["trace_id"] is None


async def test_httpx_instrumented_globally_gets_no_second_span_per_attempt(
    upstream: Upstream, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        async with rc.AsyncClient(settings=_settings(), tracer_provider=provider) as client:
            await client.get(upstream.url(0, "/?status=503"))
    finally:
        instrumentor.uninstrument()
    assert len(_by_kind(exporter, SpanKind.CLIENT)) == 3
    assert len(_by_kind(exporter, SpanKind.INTERNAL)) == 1
    assert len({r.headers["traceparent"] for r in _requests(upstream)}) == 3


async def test_traces_switched_off_in_settings_still_pass_context_on(
    upstream: Upstream, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    settings = {**_settings(), "telemetry": {"traces": False}}
    tracer = provider.get_tracer("test")
    async with rc.AsyncClient(settings=settings, tracer_provider=provider) as client:
        with tracer.start_as_current_span("handler") as handler:
            await client.get(upstream.url(0))
    assert [span.name for span in exporter.get_finished_spans()] == ["handler"]
    (request,) = _requests(upstream)
    assert _traceparent(request)[1] == format(handler.get_span_context().span_id, "016x")


async def test_a_global_sdk_set_up_after_the_client_is_picked_up(
    upstream: Upstream,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from resilient_client import _telemetry

    provider, exporter = spans
    async with rc.AsyncClient(settings=_settings()) as client:
        await client.get(upstream.url(0))  # the API alone: nothing recorded
        # What trace.set_tracer_provider() would do, without changing it for the process.
        monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
        monkeypatch.setattr(_telemetry._global_providers, "next_check", 0.0)  # a second on
        client._telemetry._tracer = provider.get_tracer("resilient_client")
        await client.get(upstream.url(0))
    assert len(_by_kind(exporter, SpanKind.INTERNAL)) == 1
    first, second = _requests(upstream)
    assert "traceparent" not in first.headers
    assert "traceparent" in second.headers


async def test_a_users_instrumented_transport_gets_no_second_span_per_attempt(
    upstream: Upstream, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport

    provider, exporter = spans
    transport = AsyncOpenTelemetryTransport(httpx.AsyncHTTPTransport(), tracer_provider=provider)
    async with rc.AsyncClient(
        settings=_settings(), transport=transport, tracer_provider=provider
    ) as client:
        await client.get(upstream.url(0, "/?status=503"))
    assert len(_by_kind(exporter, SpanKind.CLIENT)) == 3
    assert len({r.headers["traceparent"] for r in _requests(upstream)}) == 3


def test_with_no_sdk_installed_calls_work_and_record_nothing(upstream: Upstream) -> None:
    # A fresh interpreter where importing the SDK fails, as on a service that has
    # only opentelemetry-api: the client must not need it anywhere.
    import subprocess
    import sys

    script = f"""
import asyncio, sys
sys.modules["opentelemetry.sdk"] = None  # any import of the SDK now raises ImportError
import resilient_client as rc

async def main():
    async with rc.AsyncClient() as client:
        response = await client.get("{upstream.url(0, "/?status=503")}")
    print(response.status_code)

asyncio.run(main())
assert not any(name.startswith("opentelemetry.sdk") for name in sys.modules if sys.modules[name])
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "503"
    sent = _requests(upstream)
    assert len(sent) == 3
    assert all("traceparent" not in request.headers for request in sent)
    assert all("x-request-id" in request.headers for request in sent)


def test_header_slots_read_and_write_like_httpx_headers() -> None:
    from resilient_client._correlation import HeaderSlot

    headers = httpx.Headers([("X-Request-ID", "a"), ("Accept", "*/*"), ("x-request-id", "b")])
    slot = HeaderSlot("X-Request-Id")
    assert slot.get(headers) == "a"
    slot.set(headers, "c")
    assert headers.get_list("x-request-id") == ["c"]  # duplicates gone, as httpx does
    assert list(headers.keys()) == ["x-request-id", "accept"]
    missing = HeaderSlot("X-Request-Timeout-Ms")
    assert missing.get(headers) is None
    missing.set(headers, "250")
    assert headers["x-request-timeout-ms"] == "250"
    assert headers.raw[-1] == (b"X-Request-Timeout-Ms", b"250")


async def test_metrics_read_from_another_thread_while_hosts_come_and_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import sys

    # Pure logic (which hosts the table holds), so an in-memory transport: a
    # reader thread collects the observed metrics while calls add and evict hosts.
    import threading
    import time

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    stop = threading.Event()
    collections = 0

    def collect() -> None:
        nonlocal collections
        while not stop.is_set() and collections < 100_000:
            reader.get_metrics_data()
            collections += 1
            time.sleep(0.0002)  # let the loop's thread run between collections

    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    settings = {**_settings(), "max_tracked_hosts": 8}
    thread = threading.Thread(target=collect, daemon=True)
    caplog.set_level(logging.WARNING)
    # Switch threads as often as the interpreter can, so a race shows up in a short run.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    async with rc.AsyncClient(
        settings=settings, transport=transport, meter_provider=provider
    ) as client:
        thread.start()
        try:
            for index in range(600):
                await client.get(f"http://host-{index}.test/")
        finally:
            sys.setswitchinterval(interval)
            stop.set()
            thread.join(10)
    provider.shutdown()
    assert collections > 0
    problems = [r for r in caplog.records if r.name.startswith("opentelemetry")]
    assert problems == [], [r.getMessage() for r in problems]


async def test_with_propagation_off_the_headers_sent_are_httpx_own(upstream: Upstream) -> None:
    settings = {
        **_settings(),
        "telemetry": {"deadline_header": None, "request_id_header": None},
    }
    async with httpx.AsyncClient() as bare, rc.AsyncClient(settings=settings) as client:
        await bare.get(upstream.url(0), headers={"X-Custom": "1"})
        await client.get(upstream.url(0), headers={"X-Custom": "1"})
    sent_by_bare, sent_by_ours = _requests(upstream)
    assert sent_by_ours.headers == sent_by_bare.headers
