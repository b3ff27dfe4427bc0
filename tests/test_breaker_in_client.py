"""The circuit breaker, as a client user sees it on a real server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx
import pytest

import resilient_client as rc
from resilient_client.testing._upstream import Upstream

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_resilience_env")]


def _settings(**breaker: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {"consecutive_failures": 3, "open_for": 0.3, "half_open_probes": 1}
    policy.update(breaker)
    return {"default": {"breaker": policy, "retry": {"attempts": 1}}}


def _state(client: rc.AsyncClient, upstream: Upstream, index: int = 0) -> Any:
    return client.health()[f"127.0.0.1:{upstream.ports[index]}"]["breaker"]


async def test_an_open_breaker_fails_fast_without_touching_the_network(
    upstream: Upstream,
) -> None:
    async with rc.AsyncClient(settings=_settings()) as client:
        for _ in range(3):
            await client.get(upstream.url(0, "/?status=500"))
        assert _state(client, upstream)["state"] == "open"
        start = time.monotonic()
        with pytest.raises(rc.CircuitOpenError) as caught:
            await client.get(upstream.url(0))
        assert time.monotonic() - start < 0.05
        assert isinstance(caught.value, httpx.TransportError)
        assert caught.value.dependency == f"127.0.0.1:{upstream.ports[0]}"
        # Other dependencies are unaffected.
        assert (await client.get(upstream.url(1))).status_code == 200
    assert upstream.received[upstream.ports[0]] == 3


async def test_half_open_admits_capped_probes_then_closes(upstream: Upstream) -> None:
    async with rc.AsyncClient(settings=_settings(half_open_probes=2)) as client:
        for _ in range(3):
            await client.get(upstream.url(0, "/?status=503"))
        await asyncio.sleep(0.35)
        outcomes = await asyncio.gather(
            *(client.get(upstream.url(0, "/?delay=0.1")) for _ in range(6)),
            return_exceptions=True,
        )
        passed = [o for o in outcomes if isinstance(o, httpx.Response)]
        rejected = [o for o in outcomes if isinstance(o, rc.CircuitOpenError)]
        assert (len(passed), len(rejected)) == (2, 4)
        assert _state(client, upstream)["state"] == "closed"
        assert (await client.get(upstream.url(0))).status_code == 200


async def test_a_failed_probe_reopens_the_breaker(upstream: Upstream) -> None:
    async with rc.AsyncClient(settings=_settings()) as client:
        for _ in range(3):
            await client.get(upstream.url(0, "/?status=503"))
        await asyncio.sleep(0.35)
        assert (await client.get(upstream.url(0, "/?status=502"))).status_code == 502
        assert _state(client, upstream)["state"] == "open"
        with pytest.raises(rc.CircuitOpenError):
            await client.get(upstream.url(0))


async def test_it_opens_on_a_failure_ratio_over_the_window(upstream: Upstream) -> None:
    settings = _settings(consecutive_failures=None, failure_ratio=0.5, minimum_calls=10)
    async with rc.AsyncClient(settings=settings) as client:
        for index in range(10):
            status = 500 if index % 2 else 200  # never two failures in a row
            await client.get(upstream.url(0, f"/?status={status}"))
        assert _state(client, upstream)["state"] == "open"


async def test_client_errors_and_cancellations_are_not_failures(upstream: Upstream) -> None:
    async with rc.AsyncClient(settings=_settings(consecutive_failures=2)) as client:
        for _ in range(5):
            assert (await client.get(upstream.url(0, "/?status=404"))).status_code == 404
        tasks = [asyncio.create_task(client.get(upstream.url(0, "/?hang=1"))) for _ in range(5)]
        await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        breaker = _state(client, upstream)
    assert breaker["state"] == "closed"
    assert breaker["consecutive_failures"] == 0


async def test_rejections_of_our_own_are_not_failures(upstream: Upstream) -> None:
    settings = _settings(consecutive_failures=1)
    settings["default"]["bulkhead"] = {"max_concurrent": 1, "max_queue": 0}
    async with rc.AsyncClient(settings=settings) as client:
        holder = asyncio.create_task(client.get(upstream.url(0, "/?delay=0.2")))
        await asyncio.sleep(0.05)
        for _ in range(3):
            with pytest.raises(rc.BulkheadFullError):
                await client.get(upstream.url(0))
        await holder
        assert _state(client, upstream)["state"] == "closed"


async def test_retries_never_attempt_through_an_open_breaker(upstream: Upstream) -> None:
    settings = _settings(consecutive_failures=2)
    settings["default"]["retry"] = {"attempts": 5, "backoff_base": 0.001, "backoff_max": 0.001}
    async with rc.AsyncClient(settings=settings) as client:
        response = await client.get(upstream.url(0, "/?status=503"))
    # The breaker opened after the second attempt: the call ends with what it has.
    assert response.status_code == 503
    assert upstream.received[upstream.ports[0]] == 2


async def test_each_transition_is_logged_once_at_warning(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resilient_client")
    async with rc.AsyncClient(settings=_settings()) as client:
        for _ in range(6):
            with contextlib.suppress(rc.CircuitOpenError):
                await client.get(upstream.url(0, "/?status=500"))
        await asyncio.sleep(0.35)
        await client.get(upstream.url(0))
    name = f"127.0.0.1:{upstream.ports[0]}"
    ours = [r for r in caplog.records if r.name == "resilient_client"]
    records = [r for r in ours if getattr(r, "event", None) == "breaker_state"]
    assert [r.levelno for r in records] == [logging.WARNING] * 3  # open, half-open, closed
    assert all(name in r.getMessage() for r in records)
    assert [getattr(r, "breaker_state", None) for r in records] == ["open", "half_open", "closed"]
    # The three calls the open breaker refused: one record, not one per refusal.
    rejections = [r for r in ours if getattr(r, "event", None) == "rejected"]
    assert len(rejections) == 1
    assert getattr(rejections[0], "reason", None) == "breaker"
    assert getattr(rejections[0], "dependency", None) == name
    assert len(ours) == 4


async def test_429s_never_open_the_breaker(upstream: Upstream) -> None:
    # A 429 says the dependency is healthy and we are over our quota: the
    # Retry-After pause and the rate limit deal with it. An open breaker would
    # refuse calls the quota admits, for longer than the server asked.
    async with rc.AsyncClient(settings=_settings(minimum_calls=2, failure_ratio=0.1)) as client:
        for _ in range(6):
            response = await client.get(upstream.url(0, "/?status=429"))
            assert response.status_code == 429
        state = _state(client, upstream)
    assert state["state"] == "closed"
    assert state["consecutive_failures"] == 0
    assert state["calls_in_window"] == 0  # neither a failure nor a success


async def test_by_default_ten_failures_in_a_row_open_the_breaker_and_five_do_not(
    upstream: Upstream,
) -> None:
    # A run of 5 is noise on a busy dependency failing 30% of requests; a
    # dependency that is down still gives 10 in a row at once.
    settings = {"default": {"retry": {"attempts": 1}}}
    async with rc.AsyncClient(settings=settings) as client:
        for _ in range(5):
            await client.get(upstream.url(0, "/?status=503"))
        await client.get(upstream.url(0))  # a success ends the run
        assert _state(client, upstream)["state"] == "closed"
        for _ in range(9):
            await client.get(upstream.url(0, "/?status=503"))
        assert _state(client, upstream)["state"] == "closed"
        await client.get(upstream.url(0, "/?status=503"))
        assert _state(client, upstream)["state"] == "open"
