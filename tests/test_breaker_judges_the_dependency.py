"""What the circuit breaker counts: the dependency's failures, never its callers' impatience."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

import resilient_client as rc
from resilient_client.testing._upstream import Upstream

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_resilience_env")]


def _settings(timeout: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "default": {
            "breaker": {"consecutive_failures": 3, "open_for": 5.0},
            "retry": {"attempts": 1},
            "timeout": timeout or {},
        }
    }


def _breaker(client: rc.AsyncClient, upstream: Upstream) -> Any:
    return client.health()[f"127.0.0.1:{upstream.ports[0]}"]["breaker"]


async def test_a_callers_short_deadline_is_not_the_dependencys_failure(
    upstream: Upstream,
) -> None:
    # The dependency answers in 0.4 s, well within its own timeouts; impatient
    # callers give up after 50 ms. Their deadlines say nothing about it.
    async with rc.AsyncClient(settings=_settings()) as client:
        for _ in range(10):
            with pytest.raises(rc.DeadlineExceededError), rc.deadline(0.05):
                await client.get(upstream.url(0, "/?delay=0.4"))
        assert _breaker(client, upstream)["state"] == "closed"
        assert _breaker(client, upstream)["consecutive_failures"] == 0
        response = await client.get(upstream.url(0, "/?delay=0.4"))
        assert response.status_code == 200


async def test_a_cancelled_call_is_not_the_dependencys_failure(upstream: Upstream) -> None:
    async with rc.AsyncClient(settings=_settings()) as client:
        for _ in range(5):
            task = asyncio.ensure_future(client.get(upstream.url(0, "/?delay=0.4")))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert _breaker(client, upstream)["state"] == "closed"
        assert _breaker(client, upstream)["consecutive_failures"] == 0


async def test_an_attempt_timeout_is_the_dependencys_failure(upstream: Upstream) -> None:
    async with rc.AsyncClient(settings=_settings({"attempt": 0.05})) as client:
        for _ in range(3):
            with pytest.raises(httpx.TimeoutException):
                await client.get(upstream.url(0, "/?delay=0.4"))
        assert _breaker(client, upstream)["state"] == "open"


async def test_the_dependencys_own_total_running_out_is_its_failure(upstream: Upstream) -> None:
    # No per-attempt limit: the dependency's own timeout.total is what it was given.
    timeout = {"attempt": None, "total": 0.05}
    async with rc.AsyncClient(settings=_settings(timeout)) as client:
        for _ in range(3):
            with pytest.raises(rc.DeadlineExceededError):
                await client.get(upstream.url(0, "/?delay=0.4"))
        assert _breaker(client, upstream)["state"] == "open"


async def test_a_caller_deadline_longer_than_the_attempt_limit_still_counts_timeouts(
    upstream: Upstream,
) -> None:
    # The caller allows 2 s; the attempt limit (0.05 s) is what ends each attempt.
    async with rc.AsyncClient(settings=_settings({"attempt": 0.05})) as client:
        for _ in range(3):
            with pytest.raises(httpx.TimeoutException), rc.deadline(2.0):
                await client.get(upstream.url(0, "/?delay=0.4"))
        assert _breaker(client, upstream)["state"] == "open"


async def test_an_attempt_left_little_time_by_our_own_queue_is_not_the_dependencys_failure(
    upstream: Upstream,
) -> None:
    # One call at a time, and only the dependency's own timeout.total (0.4 s). A
    # call that waits 0.3 s in the bulkhead queue leaves its attempt 0.1 s: the
    # deadline that ends it says nothing about a dependency that answers in 0.2 s.
    settings = _settings({"attempt": None, "total": 0.4})
    settings["default"]["bulkhead"] = {"max_concurrent": 1, "queue_timeout": 1.0}
    async with rc.AsyncClient(settings=settings) as client:
        for _ in range(3):
            holder = asyncio.ensure_future(client.get(upstream.url(0, "/?delay=0.3")))
            await asyncio.sleep(0.01)
            with pytest.raises(rc.DeadlineExceededError):
                await client.get(upstream.url(0, "/?delay=0.2"))
            assert (await holder).status_code == 200
        assert _breaker(client, upstream)["state"] == "closed"
        assert _breaker(client, upstream)["consecutive_failures"] == 0


async def test_a_dependency_that_became_slow_can_be_cut_off_on_purpose(upstream: Upstream) -> None:
    settings = _settings()
    settings["default"]["breaker"] = {
        "consecutive_failures": None,
        "slow_call_duration": 0.1,
        "slow_call_ratio": 0.8,
        "minimum_calls": 5,
    }
    async with rc.AsyncClient(settings=settings) as client:
        for _ in range(5):
            assert (await client.get(upstream.url(0, "/?delay=0.2"))).status_code == 200
        breaker = _breaker(client, upstream)
        assert breaker["state"] == "open"
        assert breaker["slow_call_ratio"] == 1.0
        with pytest.raises(rc.CircuitOpenError, match="slow"):
            await client.get(upstream.url(0))
    assert upstream.received[upstream.ports[0]] == 5


async def test_slow_successes_never_count_with_the_rule_off(upstream: Upstream) -> None:
    async with rc.AsyncClient(settings=_settings()) as client:
        for _ in range(12):
            assert (await client.get(upstream.url(0, "/?delay=0.05"))).status_code == 200
        assert _breaker(client, upstream)["state"] == "closed"
