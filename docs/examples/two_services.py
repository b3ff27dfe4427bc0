"""Two services chained: what a request carries from one hop to the next.

Service A (FastAPI) answers ``GET /order`` by calling service B (Starlette) with a
resilient client. Both run rc.ResilienceMiddleware. A caller sends A a trace
context, a deadline and a request id; the script prints what each service saw,
then asks A's readiness endpoint. Both servers listen on 127.0.0.1, on ports the
system picks, and are stopped at the end.

    pip install -e '.[test]'        # uvicorn, starlette, fastapi
    python docs/examples/two_services.py
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from opentelemetry import trace
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import resilient_client as rc

log = logging.getLogger("example")


def what_this_hop_sees(request: Request) -> dict[str, Any]:
    at = rc.current_deadline()
    span = trace.get_current_span().get_span_context()
    return {
        "trace": format(span.trace_id, "032x") if span.is_valid else None,
        "request_id": rc.current_request_id(),
        "ms_left": None if at is None else round((at - time.monotonic()) * 1000),
        "deadline_header": request.headers.get("x-request-timeout-ms"),
    }


def service_b() -> Starlette:
    async def stock(request: Request) -> JSONResponse:
        log.info("service B: counting stock")
        return JSONResponse(what_this_hop_sees(request))

    return Starlette(
        routes=[Route("/stock", stock)], middleware=[Middleware(rc.ResilienceMiddleware)]
    )


def service_a(b_url: str) -> FastAPI:
    # One client for the service's lifetime; B is its critical dependency.
    b_host = b_url.removeprefix("http://")
    settings = {"dependencies": {"inventory": {"hosts": [b_host], "critical": True}}}
    client = rc.AsyncClient(settings=settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()  # on the server's own event loop

    app = FastAPI(lifespan=lifespan, routes=[Route("/health/ready", rc.HealthEndpoint(client))])
    app.add_middleware(rc.ResilienceMiddleware)

    @app.get("/order")
    async def order(request: Request) -> dict[str, Any]:
        seen = what_this_hop_sees(request)  # before the call below spends time
        log.info("service A: asking inventory")
        stock = await client.get(f"{b_url}/stock")
        return {"a": seen, "b": stock.json()}

    return app


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 from a thread; yields its base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))  # port 0: the system picks a free one
    config = uvicorn.Config(app, log_config=None, log_level="warning", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        give_up = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > give_up:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


def main() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(rc.ContextFilter())  # adds request_id, trace_id, span_id to every record
    handler.setFormatter(
        logging.Formatter("  log: %(message)s [request_id=%(request_id)s trace_id=%(trace_id)s]")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    for noisy in ("uvicorn", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    sent = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "X-Request-Timeout-Ms": "3000",
        "X-Request-ID": "example-1",
    }
    with serve(service_b()) as b_url, serve(service_a(b_url)) as a_url:
        print("caller sent:", ", ".join(f"{name}={value}" for name, value in sent.items()))
        answer = httpx.get(f"{a_url}/order", headers=sent, timeout=10)
        for hop, seen in (("A", answer.json()["a"]), ("B", answer.json()["b"])):
            print(
                f"service {hop} saw: trace {seen['trace']}, request id {seen['request_id']}, "
                f"deadline header {seen['deadline_header']} ms, {seen['ms_left']} ms left"
            )
        print("A echoed X-Request-ID:", answer.headers["x-request-id"])
        ready = httpx.get(f"{a_url}/health/ready", timeout=10)
        print(f"readiness: {ready.status_code} {ready.json()['status']}")


if __name__ == "__main__":
    main()
