"""Requests reach the right dependency; per-host state stays bounded and evicts safely."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

import resilient_client as rc
from resilient_client._hosts import host_key
from resilient_client.testing._upstream import Upstream

from ._helpers import pipeline_of

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_resilience_env")]


def _names(client: rc.AsyncClient, *urls: str) -> list[str]:
    return [pipeline_of(client, url).name for url in urls]


def test_host_patterns_match_most_specific_first() -> None:
    client = rc.AsyncClient(
        settings={
            "dependencies": {
                "exact_port": {"hosts": ["api.svc.internal:8443"]},
                "exact": {"hosts": ["api.svc.internal"]},
                "long_suffix": {"hosts": ["*.svc.internal"]},
                "short_suffix": {"hosts": ["*.internal"]},
                "suffix_port": {"hosts": ["*.internal:9000"]},
                "v6": {"hosts": ["[::1]:8080"]},
            }
        }
    )
    assert _names(
        client,
        "https://api.svc.internal:8443/",
        "https://API.svc.internal/",
        "http://api.svc.internal:9000/",
        "http://other.svc.internal/",
        "http://db.internal/",
        "http://db.internal:9000/",
        "http://internal/",
        "http://[::1]:8080/",
        "http://[::1]:8081/",
        "http://example.org/",
    ) == [
        "exact_port",
        "exact",
        "exact",
        "long_suffix",
        "short_suffix",
        "suffix_port",
        "internal:80",  # '*.internal' does not match 'internal' itself
        "v6",
        "[::1]:8081",
        "example.org:80",
    ]


def test_default_policy_hosts_are_keyed_by_host_and_port() -> None:
    assert host_key(httpx.URL("https://Example.org/")) == ("example.org", 443)
    assert host_key(httpx.URL("http://example.org:8080/")) == ("example.org", 8080)
    assert host_key(httpx.URL("http://[::1]/")) == ("[::1]", 80)
    client = rc.AsyncClient()
    first = pipeline_of(client, "http://a.example/x")
    assert pipeline_of(client, "http://a.example/y") is first
    assert pipeline_of(client, "https://a.example/") is not first


async def test_every_host_gets_state_of_its_own_and_health_lists_it(upstream: Upstream) -> None:
    settings = {"dependencies": {"primary": {"hosts": [f"127.0.0.1:{upstream.ports[0]}"]}}}
    async with rc.AsyncClient(settings=settings) as client:
        assert (await client.get(upstream.url(0))).status_code == 200
        assert (await client.get(upstream.url(1))).status_code == 200
        health = client.health()
    assert set(health) == {"primary", f"127.0.0.1:{upstream.ports[1]}"}
    assert json.loads(json.dumps(health)) == health  # ready to serve as JSON
    assert health["primary"]["kind"] == "named"
    assert health[f"127.0.0.1:{upstream.ports[1]}"]["kind"] == "host"
    assert health["primary"]["in_flight"] == 0


async def test_tracked_hosts_are_bounded() -> None:
    async with rc.AsyncClient(settings={"max_tracked_hosts": 100}) as client:
        for index in range(20_000):
            pipeline_of(client, f"http://host-{index}.example/")
        assert len(client.health()) == 100
        # The most recently used stay.
        assert "host-19999.example:80" in client.health()
        assert "host-0.example:80" not in client.health()


async def test_evicting_a_host_never_breaks_its_call_in_flight(upstream: Upstream) -> None:
    async with rc.AsyncClient(settings={"max_tracked_hosts": 1}) as client:
        first_url = upstream.url(0, "/?drip=0.01&size=20")
        async with client.stream("GET", first_url) as response:
            evicted = pipeline_of(client, first_url)
            # A call to another host pushes the first out of the table.
            assert (await client.get(upstream.url(1))).status_code == 200
            assert evicted.name not in client.health()
            assert evicted.has_pools  # still open: a call is using it
            body = await response.aread()
        assert body == b"x" * 20
        await asyncio.sleep(0.05)  # the retired pipeline closes its pool once idle
        assert not evicted.has_pools
        # The host comes back with fresh state.
        assert (await client.get(first_url)).status_code == 200
        assert pipeline_of(client, first_url) is not evicted


async def test_named_dependencies_are_never_evicted(upstream: Upstream) -> None:
    settings = {
        "max_tracked_hosts": 1,
        "dependencies": {"primary": {"hosts": [f"127.0.0.1:{upstream.ports[0]}"]}},
    }
    async with rc.AsyncClient(settings=settings) as client:
        primary = pipeline_of(client, upstream.url(0))
        for index in range(5):
            pipeline_of(client, f"http://other-{index}.example/")
        assert pipeline_of(client, upstream.url(0)) is primary
        assert "primary" in client.health()


def test_hosts_of_named_dependencies_do_not_push_out_default_hosts() -> None:
    settings = {"max_tracked_hosts": 3, "dependencies": {"pay": {"hosts": ["*.pay.internal"]}}}
    client = rc.AsyncClient(settings=settings)
    defaults = [pipeline_of(client, f"http://host-{i}.example/") for i in range(3)]
    for index in range(10):
        assert pipeline_of(client, f"http://shard-{index}.pay.internal/").name == "pay"
    assert [pipeline_of(client, f"http://host-{i}.example/") for i in range(3)] == defaults


async def test_a_redirect_keeps_the_shorter_budget_of_the_dependency_it_reaches(
    upstream: Upstream,
) -> None:
    target = upstream.url(1, "/?delay=0.5")
    settings = {
        "default": {"timeout": {"total": 5.0}},
        "dependencies": {
            "strict": {"hosts": [f"127.0.0.1:{upstream.ports[1]}"], "timeout": {"total": 0.2}}
        },
    }
    async with rc.AsyncClient(settings=settings, follow_redirects=True) as client:
        with pytest.raises(rc.DeadlineExceededError) as caught:
            await client.get(upstream.url(0, f"/?status=302&size=0&location={target}"))
    assert caught.value.dependency == "strict"
