"""The receiving side: what a service behind ResilienceMiddleware and HealthEndpoint can rely on."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from opentelemetry import baggage, propagate, trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

import resilient_client as rc
from resilient_client._asgi import HealthEndpoint, Message, ResilienceMiddleware, Scope
from resilient_client._correlation import current_request_id
from resilient_client._deadline import monotonic
from resilient_client.testing._upstream import Upstream

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_resilience_env")]

ROOT = Path(__file__).resolve().parent.parent
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


# -- what a handler sees -------------------------------------------------------------------


def seen_here(request: Request) -> dict[str, Any]:
    """What the code handling ``request`` finds in its context, as JSON."""
    at = rc.current_deadline()
    span_context = trace.get_current_span().get_span_context()
    return {
        "time_left": None if at is None else at - monotonic(),
        "request_id": current_request_id(),
        "trace_id": format(span_context.trace_id, "032x") if span_context.is_valid else None,
        "span_id": format(span_context.span_id, "016x") if span_context.is_valid else None,
        "baggage": {key: str(value) for key, value in baggage.get_all().items()},
        "headers": dict(request.headers),
    }


async def record(request: Request) -> JSONResponse:
    return JSONResponse(seen_here(request))


def recorder(**options: Any) -> Starlette:
    """A service whose one route answers with what its handler saw."""
    return Starlette(
        routes=[Route("/", record)], middleware=[Middleware(ResilienceMiddleware, **options)]
    )


def asgi_client(app: Any) -> httpx.AsyncClient:
    # Plain httpx on purpose: it adds no trace context, deadline or request id of its own.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service")


async def seen(app: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with asgi_client(app) as client:
        response = await client.get("/", headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    result["response_headers"] = dict(response.headers)
    return result


# -- a real server on 127.0.0.1 ------------------------------------------------------------


class Served:
    """An ASGI app served by uvicorn on 127.0.0.1 (an ephemeral port) from its own thread."""

    def __init__(self, app: Any) -> None:
        # Bound here, so the port is known and taken before the server starts.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,  # leave the test's logging configuration alone
            log_level="warning",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        give_up = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > give_up:
                self.__exit__(None, None, None)
                raise RuntimeError("uvicorn did not start within 10 s")
            time.sleep(0.01)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._socket.close()
        assert not self._thread.is_alive(), "uvicorn did not stop within 10 s"


# -- deadline ------------------------------------------------------------------------------


async def test_the_deadline_header_becomes_the_handlers_deadline() -> None:
    result = await seen(recorder(), {"X-Request-Timeout-Ms": "1500"})
    assert 1.0 < result["time_left"] <= 1.5


async def test_without_a_deadline_header_there_is_no_deadline() -> None:
    assert (await seen(recorder()))["time_left"] is None


@pytest.mark.parametrize(
    ("options", "cap"),
    [
        ({"max_deadline": 2.0}, 2.0),
        ({"settings": {"telemetry": {"max_incoming_deadline": 3.0}}}, 3.0),
        ({}, 60.0),  # the documented default
    ],
)
async def test_a_caller_cannot_grant_more_than_max_deadline(
    options: dict[str, Any], cap: float
) -> None:
    result = await seen(recorder(**options), {"X-Request-Timeout-Ms": str(24 * 3600 * 1000)})
    assert cap - 1.0 < result["time_left"] <= cap


@pytest.mark.parametrize("value", ["soon", "-5", "1.5", "", "1e3", "9" * 13])
async def test_an_invalid_deadline_header_is_ignored(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="resilient_client.asgi"):
        result = await seen(recorder(), {"X-Request-Timeout-Ms": value})
    assert result["time_left"] is None
    assert any("X-Request-Timeout-Ms" in r.getMessage() for r in caplog.records)


async def test_the_shorter_of_two_deadline_headers_wins() -> None:
    headers = [("X-Request-Timeout-Ms", "5000"), ("X-Request-Timeout-Ms", "800")]
    async with asgi_client(recorder()) as client:
        result = (await client.get("/", headers=headers)).json()
    assert 0.3 < result["time_left"] <= 0.8


async def test_a_custom_deadline_header_and_none_turning_it_off() -> None:
    result = await seen(recorder(deadline_header="Grpc-Budget-Ms"), {"grpc-budget-ms": "700"})
    assert 0.2 < result["time_left"] <= 0.7
    settings = {"telemetry": {"deadline_header": None}}
    result = await seen(recorder(settings=settings), {"X-Request-Timeout-Ms": "700"})
    assert result["time_left"] is None


async def test_calls_made_while_handling_inherit_the_deadline(upstream: Upstream) -> None:
    """Through a real rc.AsyncClient call to 127.0.0.1: 0 ms fails fast, unsent."""

    # Made once, outside the timed part: building a client loads the CA bundle,
    # which takes long on a busy machine.
    outgoing = rc.AsyncClient()

    async def call_upstream(request: Request) -> JSONResponse:
        try:
            response = await outgoing.get(upstream.url(0, "/?delay=2"))
        except rc.DeadlineExceededError as error:
            return JSONResponse({"outcome": type(error).__name__})
        return JSONResponse({"outcome": response.status_code})

    app = Starlette(
        routes=[Route("/", call_upstream)], middleware=[Middleware(ResilienceMiddleware)]
    )
    async with outgoing, asgi_client(app) as client:
        start = time.monotonic()
        expired = (await client.get("/", headers={"X-Request-Timeout-Ms": "0"})).json()
        assert time.monotonic() - start < 1.0
        bounded = (await client.get("/", headers={"X-Request-Timeout-Ms": "300"})).json()
        assert time.monotonic() - start < 1.8  # the upstream would have taken 2 s
    assert expired == bounded == {"outcome": "DeadlineExceededError"}
    assert upstream.received[upstream.ports[0]] == 1  # the expired call never went out


# -- request id ----------------------------------------------------------------------------


async def test_the_request_id_header_is_bound_and_echoed() -> None:
    result = await seen(recorder(), {"X-Request-ID": "  order-42  "})
    assert result["request_id"] == "order-42"
    assert result["response_headers"]["x-request-id"] == "order-42"


async def test_a_missing_request_id_is_created_and_echoed() -> None:
    first, second = await seen(recorder()), await seen(recorder())
    assert len(first["request_id"]) == 32
    int(first["request_id"], 16)
    assert first["request_id"] != second["request_id"]
    assert first["response_headers"]["x-request-id"] == first["request_id"]


@pytest.mark.parametrize("value", ["caf\u00e9".encode(), b"   ", b"tab\there"])
async def test_an_invalid_request_id_is_replaced(value: bytes) -> None:
    async with asgi_client(recorder()) as client:
        response = await client.get("/", headers={b"X-Request-ID": value})
    bound = response.json()["request_id"]
    assert len(bound) == 32
    assert response.headers["x-request-id"] == bound


async def test_a_request_id_the_application_set_is_not_overwritten() -> None:
    async def own_id(request: Request) -> Response:
        return Response("ok", headers={"X-Request-ID": "from-the-app"})

    app = Starlette(routes=[Route("/", own_id)], middleware=[Middleware(ResilienceMiddleware)])
    async with asgi_client(app) as client:
        response = await client.get("/", headers={"X-Request-ID": "from-the-caller"})
    assert response.headers.get_list("x-request-id") == ["from-the-app"]


async def test_echo_off_and_a_custom_request_id_header() -> None:
    result = await seen(recorder(echo_request_id=False), {"X-Request-ID": "quiet"})
    assert result["request_id"] == "quiet"
    assert "x-request-id" not in result["response_headers"]
    result = await seen(recorder(request_id_header="X-Correlation-ID"), {"X-Correlation-ID": "c1"})
    assert result["request_id"] == "c1"
    assert result["response_headers"]["x-correlation-id"] == "c1"


def test_invalid_options_are_refused_like_settings() -> None:
    with pytest.raises(rc.SettingsError, match="deadline_header"):
        ResilienceMiddleware(recorder(), deadline_header="Not A Header")
    with pytest.raises(rc.SettingsError, match="max_incoming_deadline"):
        ResilienceMiddleware(recorder(), max_deadline=0)


# -- trace context -------------------------------------------------------------------------


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    # Given explicitly to whoever traces: the global tracer provider is never set.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


async def test_incoming_trace_context_and_baggage_are_the_handlers_parent(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer(__name__)

    async def traced(request: Request) -> JSONResponse:
        with tracer.start_as_current_span("handler"):
            return JSONResponse(seen_here(request))

    app = Starlette(routes=[Route("/", traced)], middleware=[Middleware(ResilienceMiddleware)])
    headers = {"traceparent": TRACEPARENT, "baggage": "tenant=acme,plan=gold"}
    async with asgi_client(app) as client:
        result = (await client.get("/", headers=headers)).json()
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_SPAN_ID
    assert span.parent.is_remote
    assert result["trace_id"] == format(span.context.trace_id, "032x") == TRACE_ID
    assert result["baggage"] == {"tenant": "acme", "plan": "gold"}


async def test_beside_opentelemetrys_asgi_instrumentation_one_server_span_and_no_re_extract(
    provider: TracerProvider, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our module calls propagate.extract through the module; OpenTelemetry's
    # middleware imported its own reference, so this counts only ours.
    extracted: list[object] = []
    original = propagate.extract

    def counting_extract(*args: Any, **kwargs: Any) -> Any:
        extracted.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(propagate, "extract", counting_extract)
    app = OpenTelemetryMiddleware(recorder(), tracer_provider=provider)
    headers = {
        "traceparent": TRACEPARENT,
        "X-Request-Timeout-Ms": "900",
        "X-Request-ID": "with-otel",
    }
    result = await seen(app, headers)
    server_spans = [s for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.SERVER]
    assert len(server_spans) == 1
    (server,) = server_spans
    assert extracted == []
    # The handler runs inside OpenTelemetry's SERVER span (not the caller's span
    # put back by a second extract), and still gets what that layer lacks.
    assert result["span_id"] == format(server.context.span_id, "016x")
    assert result["trace_id"] == TRACE_ID
    assert result["request_id"] == "with-otel"
    assert 0.4 < result["time_left"] <= 0.9


async def test_opentelemetrys_instrumentation_inside_ours_loses_its_server_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Why docs/telemetry.md says to put OpenTelemetry's middleware outside this one.

    Inside, it finds the caller's context already current and makes an INTERNAL
    span instead of the SERVER span (OpenTelemetry's choice, pinned here so the
    advice is revisited if that changes). The trace itself still holds together.
    """
    app = ResilienceMiddleware(
        OpenTelemetryMiddleware(Starlette(routes=[Route("/", record)]), tracer_provider=provider)
    )
    result = await seen(app, {"traceparent": TRACEPARENT, "X-Request-ID": "outside"})
    spans = exporter.get_finished_spans()
    assert [s for s in spans if s.kind is trace.SpanKind.SERVER] == []
    (outer,) = [s for s in spans if s.parent is not None and s.parent.is_remote]
    assert outer.kind is trace.SpanKind.INTERNAL
    assert outer.parent is not None
    assert format(outer.parent.span_id, "016x") == PARENT_SPAN_ID
    assert (result["trace_id"], result["request_id"]) == (TRACE_ID, "outside")


# -- nothing leaks -------------------------------------------------------------------------


def assert_clean_context() -> None:
    assert rc.current_deadline() is None
    assert current_request_id() is None
    assert not trace.get_current_span().get_span_context().is_valid
    assert baggage.get_all() == {}


async def test_nothing_is_left_bound_after_a_request_even_one_that_fails() -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("handler failed")

    full = {
        "traceparent": TRACEPARENT,
        "baggage": "k=v",
        "X-Request-Timeout-Ms": "5000",
        "X-Request-ID": "r1",
    }
    # httpx's ASGITransport runs the app in this very task: a leak would show here.
    await seen(recorder(), full)
    assert_clean_context()
    app = Starlette(routes=[Route("/", boom)], middleware=[Middleware(ResilienceMiddleware)])
    async with asgi_client(app) as client:
        with pytest.raises(RuntimeError, match="handler failed"):
            await client.get("/", headers=full)
    assert_clean_context()


async def test_nothing_is_left_bound_after_a_cancelled_request() -> None:
    entered = asyncio.Event()

    async def stuck(scope: Scope, receive: Any, send: Any) -> None:
        entered.set()
        await asyncio.sleep(30)

    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"x-request-timeout-ms", b"5000"), (b"traceparent", TRACEPARENT.encode())],
    }

    async def never_sent(message: Message) -> None:
        raise AssertionError("nothing should be sent")

    async def no_body() -> Message:
        return {"type": "http.request", "body": b""}

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await ResilienceMiddleware(stuck)(scope, no_body, never_sent)
    assert entered.is_set()
    assert_clean_context()


async def test_one_request_does_not_see_the_last_ones_context_on_a_real_server() -> None:
    """Two requests on one kept-alive connection to uvicorn: the second brings nothing."""
    with Served(recorder()) as service:
        async with httpx.AsyncClient(base_url=service.url) as client:
            full = {
                "traceparent": TRACEPARENT,
                "X-Request-Timeout-Ms": "5000",
                "X-Request-ID": "r1",
            }
            first = (await client.get("/", headers=full)).json()
            second = (await client.get("/")).json()
    assert (first["request_id"], first["trace_id"]) == ("r1", TRACE_ID)
    assert first["time_left"] is not None
    assert second["time_left"] is None
    assert second["trace_id"] is None
    assert second["request_id"] not in (None, "r1")


# -- other scopes and frameworks -----------------------------------------------------------


async def test_lifespan_passes_straight_through() -> None:
    calls: list[tuple[Scope, Any, Any]] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        calls.append((scope, receive, send))

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    await ResilienceMiddleware(app)(scope, receive, send)
    assert calls == [(scope, receive, send)]


async def test_a_websocket_gets_the_request_id_on_accept() -> None:
    bound: list[str | None] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        bound.append(current_request_id())
        await send({"type": "websocket.accept"})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    scope: Scope = {"type": "websocket", "path": "/", "headers": [(b"x-request-id", b"ws-1")]}
    await ResilienceMiddleware(app)(scope, receive, send)
    assert bound == ["ws-1"]
    assert sent == [{"type": "websocket.accept", "headers": [(b"x-request-id", b"ws-1")]}]


async def test_fastapi_add_middleware() -> None:
    app = FastAPI()

    @app.get("/")
    async def handler(request: Request) -> dict[str, Any]:
        return seen_here(request)

    app.add_middleware(ResilienceMiddleware, max_deadline=1.0)
    result = await seen(app, {"X-Request-Timeout-Ms": "5000", "X-Request-ID": "fast"})
    assert 0.5 < result["time_left"] <= 1.0
    assert result["response_headers"]["x-request-id"] == "fast"


# -- readiness -----------------------------------------------------------------------------


def _breaker_settings(critical: bool = True) -> dict[str, Any]:
    return {
        "default": {
            "breaker": {"consecutive_failures": 2, "open_for": 0.5},
            "retry": {"attempts": 1},
        },
        "dependencies": {"inventory": {"hosts": ["placeholder.invalid"], "critical": critical}},
    }


def _with_port(settings: dict[str, Any], upstream: Upstream, index: int = 0) -> dict[str, Any]:
    settings["dependencies"]["inventory"]["hosts"] = [f"127.0.0.1:{upstream.ports[index]}"]
    return settings


async def _open_breaker(client: rc.AsyncClient, upstream: Upstream) -> None:
    for _ in range(2):
        assert (await client.get(upstream.url(0, "/?status=500"))).status_code == 500
    assert client.health()["inventory"]["breaker"]["state"] == "open"


async def test_readiness_fails_while_a_critical_dependencys_breaker_is_open(
    upstream: Upstream,
) -> None:
    async with rc.AsyncClient(settings=_with_port(_breaker_settings(), upstream)) as client:
        probe = Starlette(routes=[Route("/health/ready", HealthEndpoint(client))])
        async with asgi_client(probe) as checker:
            ready = await checker.get("/health/ready")
            assert ready.status_code == 200
            assert ready.headers["content-type"] == "application/json"
            assert ready.headers["cache-control"] == "no-store"
            body = ready.json()
            assert (body["status"], body["unusable_critical"]) == ("pass", [])
            assert body["dependencies"]["inventory"]["critical"] is True

            await _open_breaker(client, upstream)
            failing = await checker.get("/health/ready")
            assert failing.status_code == 503
            body = failing.json()
            assert (body["status"], body["unusable_critical"]) == ("fail", ["inventory"])
            assert body["dependencies"]["inventory"]["breaker"]["state"] == "open"

            # Once open_for has passed the breaker lets a probe through: usable again.
            give_up = time.monotonic() + 5
            while (await checker.get("/health/ready")).status_code != 200:
                assert time.monotonic() < give_up, "readiness did not recover"
                await asyncio.sleep(0.05)
            assert (await client.get(upstream.url(0))).status_code == 200
            assert (await checker.get("/health/ready")).json()["status"] == "pass"


async def test_a_non_critical_dependency_never_fails_readiness(upstream: Upstream) -> None:
    settings = _with_port(_breaker_settings(critical=False), upstream)
    async with rc.AsyncClient(settings=settings) as client:
        health = HealthEndpoint(client)
        await _open_breaker(client, upstream)
        async with asgi_client(health) as checker:
            response = await checker.get("/")
        assert response.status_code == 200
        assert response.json()["dependencies"]["inventory"]["usable"] is False
        # Named as critical here instead of in the settings, it does.
        assert HealthEndpoint(client, critical=["inventory"]).report()["status"] == "fail"


async def test_head_method_not_allowed_and_mounting() -> None:
    async with rc.AsyncClient(settings=_breaker_settings()) as client:
        health = HealthEndpoint(client)
        app = Starlette(routes=[Mount("/health/ready", app=health)])
        async with asgi_client(app) as checker:
            got = await checker.get("/health/ready/")
            head = await checker.head("/health/ready/")
            post = await checker.post("/health/ready/")
    assert got.status_code == head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(got.content))
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"


async def test_an_unknown_critical_name_is_refused_at_construction() -> None:
    async with rc.AsyncClient(settings=_breaker_settings()) as client:
        with pytest.raises(ValueError, match=r"'payments'.*not a named dependency.*'inventory'"):
            HealthEndpoint(client, critical=["inventory", "payments"])
        with pytest.raises(TypeError, match="list of dependency names"):
            HealthEndpoint(client, critical="inventory")


# -- the proof: two real services chained --------------------------------------------------


def service_a(b_url: str) -> Starlette:
    """Calls service B with a resilient client while handling each request."""

    async def handle(request: Request) -> JSONResponse:
        before = seen_here(request)  # before the call spends any of the time
        async with rc.AsyncClient() as client:
            downstream = await client.get(b_url)
        return JSONResponse({"a": before, "b": downstream.json()})

    return Starlette(routes=[Route("/", handle)], middleware=[Middleware(ResilienceMiddleware)])


async def test_trace_deadline_and_request_id_cross_two_real_services() -> None:
    with Served(recorder()) as b, Served(service_a(b.url)) as a:
        async with httpx.AsyncClient() as caller:
            response = await caller.get(
                a.url,
                headers={
                    "traceparent": TRACEPARENT,
                    "X-Request-Timeout-Ms": "5000",
                    "X-Request-ID": "chain-1",
                },
            )
    assert response.status_code == 200, response.text
    a_saw, b_saw = response.json()["a"], response.json()["b"]
    assert (a_saw["trace_id"], a_saw["request_id"]) == (TRACE_ID, "chain-1")
    # What reached B on the wire...
    assert b_saw["headers"]["traceparent"].split("-")[1] == TRACE_ID
    assert b_saw["headers"]["x-request-id"] == "chain-1"
    assert 0 < int(b_saw["headers"]["x-request-timeout-ms"]) < 5000
    # ...and what B's middleware made of it.
    assert (b_saw["trace_id"], b_saw["request_id"]) == (TRACE_ID, "chain-1")
    assert 0 < b_saw["time_left"] < a_saw["time_left"] <= 5.0


# -- the runnable example ------------------------------------------------------------------


def test_the_two_services_example_runs() -> None:
    example = ROOT / "docs" / "examples" / "two_services.py"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_CLIENT_")}
    try:
        done = subprocess.run(
            [sys.executable, str(example)],
            capture_output=True,
            text=True,
            timeout=60,
            env=environment,
            cwd=ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it
        raise AssertionError(f"the example did not finish in 60 s: {exc.stdout!r}") from None
    assert done.returncode == 0, done.stderr
    output = done.stdout
    hops = re.findall(
        r"service ([AB]) saw: trace (\w+), request id (\S+), deadline header (\d+) ms", output
    )
    assert [hop for hop, *_ in hops] == ["A", "B"], output
    (_, trace_a, id_a, header_a), (_, trace_b, id_b, header_b) = hops
    assert trace_a == trace_b == TRACE_ID
    assert id_a == id_b == "example-1"
    assert 0 < int(header_b) < int(header_a) == 3000
    assert "A echoed X-Request-ID: example-1" in output
    assert "readiness: 200 pass" in output
