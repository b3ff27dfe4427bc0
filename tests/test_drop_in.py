"""Everything httpx does keeps working, and the user's own transports get the resilience layers.

httpx's own AsyncClient test suite runs against rc.AsyncClient too
(tests/test_httpx_compat.py); these tests cover what that suite cannot see:
that the httpx features compose with per-dependency pools on a real server.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

import resilient_client as rc
from resilient_client.testing._upstream import Upstream

from ._helpers import pipeline_of

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_resilience_env")]


async def test_it_is_an_httpx_async_client(upstream: Upstream) -> None:
    async with rc.AsyncClient(base_url=upstream.url(0), params={"size": 5}) as client:
        assert isinstance(client, httpx.AsyncClient)
        response = await client.get("/")
    assert response.status_code == 200
    assert response.content == b"xxxxx"
    assert response.request.url.params["size"] == "5"


async def test_auth_headers_cookies_and_event_hooks(upstream: Upstream) -> None:
    seen: list[str] = []

    async def on_request(request: httpx.Request) -> None:
        seen.append(f"request {request.url.path}")

    async def on_response(response: httpx.Response) -> None:
        seen.append(f"response {response.status_code}")

    async with rc.AsyncClient(
        auth=("user", "secret"),
        headers={"X-Team": "orders"},
        cookies={"session": "abc"},
        event_hooks={"request": [on_request], "response": [on_response]},
    ) as client:
        await client.post(upstream.url(0, "/submit"), json={"n": 1})
    recorded = upstream.recent[-1]
    assert recorded.method == "POST"
    assert recorded.headers["authorization"].startswith("Basic ")
    assert recorded.headers["x-team"] == "orders"
    assert recorded.headers["cookie"] == "session=abc"
    assert json.loads(recorded.body) == {"n": 1}
    assert seen == ["request /submit", "response 200"]


async def test_redirects_across_dependencies(upstream: Upstream) -> None:
    target = upstream.url(1, "/?size=3")
    async with rc.AsyncClient(follow_redirects=True) as client:
        response = await client.get(upstream.url(0, f"/?status=302&size=0&location={target}"))
        assert response.status_code == 200
        assert [r.status_code for r in response.history] == [302]
        assert set(client.health()) == {f"127.0.0.1:{port}" for port in upstream.ports}


async def test_send_and_stream(upstream: Upstream) -> None:
    async with rc.AsyncClient() as client:
        request = client.build_request("PUT", upstream.url(0, "/?size=4"), content=b"body")
        response = await client.send(request)
        assert response.content == b"xxxx"
        async with client.stream("GET", upstream.url(0, "/?size=100000")) as streamed:
            total = sum([len(chunk) async for chunk in streamed.aiter_bytes()])
        assert total == 100000
    assert upstream.recent[0].body == b"body"


async def test_a_generator_body_is_sent_once(upstream: Upstream) -> None:
    async def chunks() -> object:
        yield b"a"
        yield b"b"

    async with rc.AsyncClient() as client:
        response = await client.post(upstream.url(0), content=chunks())  # type: ignore[arg-type]
    assert response.status_code == 200
    assert upstream.recent[-1].body == b"ab"


async def test_the_users_transport_is_used_and_gets_the_resilience_layers() -> None:
    release = asyncio.Event()
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await release.wait()
        return httpx.Response(200, content=b"mocked")

    settings = {"default": {"bulkhead": {"max_concurrent": 1, "max_queue": 0}}}
    async with rc.AsyncClient(transport=httpx.MockTransport(handler), settings=settings) as client:
        first = asyncio.create_task(client.get("http://mocked.example/"))
        await asyncio.sleep(0.01)
        with pytest.raises(rc.BulkheadFullError):
            await client.get("http://mocked.example/")
        release.set()
        assert (await first).content == b"mocked"
        release.clear()
        # The mock ignores httpx's timeouts; the backstop still keeps the deadline.
        with rc.deadline(0.05), pytest.raises(rc.DeadlineExceededError):
            await client.get("http://mocked.example/")
    assert calls == 2


async def test_mounts_are_used_as_given(upstream: Upstream) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204)

    async with rc.AsyncClient(
        mounts={"http://mocked.example": httpx.MockTransport(handler)}
    ) as client:
        assert (await client.get("http://mocked.example/")).status_code == 204
        assert (await client.get(upstream.url(0))).status_code == 200


async def test_proxy_from_the_environment_gets_a_pool_per_dependency(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 1 plays an HTTP proxy: a proxied request arrives in absolute form.
    monkeypatch.setenv("HTTP_PROXY", upstream.url(1))
    async with rc.AsyncClient() as client:
        first = await client.get("http://service-a.example/a")
        second = await client.get("http://service-b.example/b")
        assert (first.status_code, second.status_code) == (200, 200)
        a = pipeline_of(client, "http://service-a.example/")
        b = pipeline_of(client, "http://service-b.example/")
        assert a is not b
        assert a.health()["pool"]["open_pools"] == 1
        assert b.health()["pool"]["open_pools"] == 1
    targets = [r.target for r in upstream.recent if r.port == upstream.ports[1]]
    assert targets == ["http://service-a.example/a", "http://service-b.example/b"]


async def test_trust_env_false_ignores_the_proxy_environment(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    async with rc.AsyncClient(trust_env=False) as client:
        assert (await client.get(upstream.url(0))).status_code == 200


async def test_limits_size_each_dependencys_own_pool(upstream: Upstream) -> None:
    limits = httpx.Limits(max_connections=3, max_keepalive_connections=2)
    async with rc.AsyncClient(limits=limits) as client:
        pools = [pipeline_of(client, upstream.url(i)).health()["pool"] for i in (0, 1)]
    assert [p["max_connections"] for p in pools] == [3, 3]
    assert [p["max_keepalive"] for p in pools] == [2, 2]
    # Explicit pool settings win over the client's limits.
    settings = {"default": {"pool": {"max_connections": 7}}}
    async with rc.AsyncClient(limits=limits, settings=settings) as client:
        assert pipeline_of(client, upstream.url(0)).health()["pool"]["max_connections"] == 7


async def test_closing_the_client_closes_every_dependency_pool(upstream: Upstream) -> None:
    client = rc.AsyncClient()
    await client.get(upstream.url(0))
    await client.get(upstream.url(1))
    pipelines = [pipeline_of(client, upstream.url(i)) for i in (0, 1)]
    assert all(p.has_pools for p in pipelines)
    await client.aclose()
    assert not any(p.has_pools for p in pipelines)
    with pytest.raises(RuntimeError, match="closed"):
        await client.get(upstream.url(0))


async def test_a_transport_factory_builds_each_dependencys_pool(upstream: Upstream) -> None:
    built: list[tuple[str, int | None]] = []

    def factory(
        dependency: str, limits: httpx.Limits, proxy: httpx.Proxy | None
    ) -> httpx.AsyncBaseTransport:
        built.append((dependency, limits.max_connections))
        return httpx.AsyncHTTPTransport(limits=limits)

    settings = {"dependencies": {"primary": {"hosts": [f"127.0.0.1:{upstream.ports[0]}"]}}}
    async with rc.AsyncClient(settings=settings, transport_factory=factory) as client:
        for _ in range(3):
            await client.get(upstream.url(0))
            await client.get(upstream.url(1))
    assert built == [("primary", 100), (f"127.0.0.1:{upstream.ports[1]}", 100)]


def test_a_client_with_its_own_transport_builds_no_tls_context() -> None:
    # As with httpx: a bad CA path only matters once a real pool is needed.
    client = rc.AsyncClient(
        transport=httpx.MockTransport(lambda request: httpx.Response(200)),
        verify=False,
        cert="/nonexistent/client.pem",
    )
    assert client.health() == {}
