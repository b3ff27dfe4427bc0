"""A logical call never outlives its deadline: hanging servers, drips, queues, streams."""

from __future__ import annotations

import asyncio
import gc
import time
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import resilient_client as rc
from resilient_client._deadline import current_deadline
from resilient_client._timeout import LiveTimeouts
from resilient_client.testing._upstream import Upstream

pytestmark = pytest.mark.anyio

# Tests may assert generous bounds on behaviour: a deadline is kept within 50 ms.
TOLERANCE = 0.05


async def _elapsed_until_error(
    client: rc.AsyncClient, url: str, error: type[BaseException], seconds: float | None = None
) -> float:
    start = time.monotonic()
    with rc.deadline(seconds if seconds is not None else 3600), pytest.raises(error):
        await client.get(url)
    return time.monotonic() - start


async def test_deadline_scope_is_kept_for_a_hanging_server(upstream: Upstream) -> None:
    async with rc.AsyncClient() as client:
        elapsed = await _elapsed_until_error(
            client, upstream.url(0, "/?hang=1"), rc.DeadlineExceededError, 0.3
        )
    assert 0.3 - 0.005 <= elapsed <= 0.3 + TOLERANCE


async def test_deadline_is_kept_for_a_server_that_drips_the_body(upstream: Upstream) -> None:
    # One byte every 50 ms: every read succeeds well within httpx's read timeout,
    # so only a deadline over the whole call can end it.
    async with rc.AsyncClient() as client:
        elapsed = await _elapsed_until_error(
            client, upstream.url(0, "/?drip=0.05&size=1000"), rc.DeadlineExceededError, 0.4
        )
    assert 0.4 - 0.005 <= elapsed <= 0.4 + TOLERANCE


async def test_timeout_total_from_settings_bounds_a_call_without_a_scope(
    upstream: Upstream,
) -> None:
    settings = {"default": {"timeout": {"total": 0.3, "attempt": None}}}
    async with rc.AsyncClient(settings=settings) as client:
        elapsed = await _elapsed_until_error(
            client, upstream.url(0, "/?drip=0.05&size=1000"), rc.DeadlineExceededError
        )
    assert 0.3 - 0.005 <= elapsed <= 0.3 + TOLERANCE


async def test_deadline_exceeded_is_an_httpx_timeout_and_names_the_dependency(
    upstream: Upstream,
) -> None:
    async with rc.AsyncClient() as client:
        with pytest.raises(httpx.TimeoutException) as caught, rc.deadline(0.1):
            await client.get(upstream.url(0, "/?hang=1"))
    error = caught.value
    assert isinstance(error, rc.DeadlineExceededError)
    assert error.dependency == f"127.0.0.1:{upstream.ports[0]}"
    assert error.dependency in str(error)
    assert error.request.url == httpx.URL(upstream.url(0, "/?hang=1"))


async def test_nested_scopes_can_only_shrink_the_time_left(upstream: Upstream) -> None:
    async with rc.AsyncClient() as client:
        start = time.monotonic()
        # The inner scope asks for more than the caller has: it is ignored.
        with rc.deadline(0.2), rc.deadline(5.0), pytest.raises(rc.DeadlineExceededError):
            await client.get(upstream.url(0, "/?hang=1"))
        assert time.monotonic() - start <= 0.2 + TOLERANCE


@given(outer=st.floats(0, 100), inner=st.floats(0, 100))
def test_nested_deadline_is_the_earlier_of_both(outer: float, inner: float) -> None:
    with rc.deadline(outer) as first:
        with rc.deadline(inner) as second:
            assert second.at <= first.at
            assert current_deadline() == second.at
        assert current_deadline() == first.at
    assert current_deadline() is None


def test_deadline_rejects_negative_and_nan() -> None:
    with pytest.raises(ValueError, match="must be >= 0"), rc.deadline(-1):
        pass
    with pytest.raises(ValueError, match="must be >= 0"), rc.deadline(float("nan")):
        pass
    with pytest.raises(TypeError), rc.deadline("1"):  # type: ignore[arg-type]
        pass


async def test_an_expired_deadline_fails_before_anything_is_sent(upstream: Upstream) -> None:
    async with rc.AsyncClient() as client:
        with (
            rc.deadline(0),
            pytest.raises(rc.DeadlineExceededError, match="before the call was admitted"),
        ):
            await client.get(upstream.url(0))
    assert upstream.received[upstream.ports[0]] == 0


async def test_attempt_timeout_ends_the_attempt_not_as_deadline_exceeded(
    upstream: Upstream,
) -> None:
    settings = {"default": {"timeout": {"total": 5.0, "attempt": 0.2}, "retry": {"attempts": 1}}}
    async with rc.AsyncClient(settings=settings) as client:
        start = time.monotonic()
        with pytest.raises(httpx.TimeoutException) as caught:
            await client.get(upstream.url(0, "/?hang=1"))
        assert time.monotonic() - start <= 0.2 + TOLERANCE
    assert not isinstance(caught.value, rc.DeadlineExceededError)


async def test_the_callers_own_shorter_httpx_timeout_keeps_its_type(upstream: Upstream) -> None:
    async with rc.AsyncClient(timeout=httpx.Timeout(5.0, read=0.1)) as client:
        with pytest.raises(httpx.ReadTimeout) as caught:
            await client.get(upstream.url(0, "/?hang=1"))
    assert not isinstance(caught.value, rc.DeadlineExceededError)


async def test_a_streamed_body_must_be_read_within_the_deadline(upstream: Upstream) -> None:
    async with rc.AsyncClient() as client:
        start = time.monotonic()
        with rc.deadline(0.3):
            async with client.stream("GET", upstream.url(0, "/?drip=0.05&size=1000")) as response:
                assert response.status_code == 200
                with pytest.raises(rc.DeadlineExceededError, match="reading the body"):
                    async for _ in response.aiter_bytes():
                        pass
        assert time.monotonic() - start <= 0.3 + TOLERANCE


async def test_redirects_share_one_budget(upstream: Upstream) -> None:
    # Each hop alone fits in the budget; the whole logical call does not.
    second_hop = upstream.url(1, "/?delay=0.25")
    first_hop = upstream.url(0, "/?delay=0.25&status=302&size=0&location=" + quote(second_hop))
    settings = {"default": {"timeout": {"total": 0.4}}}
    async with rc.AsyncClient(settings=settings, follow_redirects=True) as client:
        start = time.monotonic()
        with pytest.raises(rc.DeadlineExceededError):
            await client.get(first_hop)
        assert 0.4 - 0.005 <= time.monotonic() - start <= 0.4 + TOLERANCE
    assert upstream.received[upstream.ports[1]] == 1


async def test_deadline_is_kept_for_a_server_that_drips_its_headers(upstream: Upstream) -> None:
    # Headers arriving a byte at a time defeat per-read timeouts before the body
    # is even reached; the backstop at the deadline ends the call.
    async with rc.AsyncClient() as client:
        elapsed = await _elapsed_until_error(
            client, upstream.url(0, "/?drip_head=0.02"), rc.DeadlineExceededError, 0.3
        )
    assert 0.3 - 0.005 <= elapsed <= 0.3 + TOLERANCE


async def test_a_hanging_server_ends_in_httpxs_own_timeout_not_a_cancellation(
    upstream: Upstream,
) -> None:
    # The read timeout is worked out when the read starts, so it ends exactly at
    # the deadline and nothing inside the pool is cancelled (which could leak
    # a slot and would make the pool be replaced).
    # Breaker and retries out of the way: this is about how each attempt ends.
    quiet = {"breaker": {"consecutive_failures": None}, "retry": {"attempts": 1}}
    async with rc.AsyncClient(settings={"default": quiet}) as client:
        for _ in range(5):
            with rc.deadline(0.1), pytest.raises(rc.DeadlineExceededError) as caught:
                await client.get(upstream.url(0, "/?hang=1"))
            assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
        settings = {"default": {**quiet, "timeout": {"attempt": 0.1}}}
    async with rc.AsyncClient(settings=settings) as client:
        for _ in range(5):
            with pytest.raises(httpx.ReadTimeout):
                await client.get(upstream.url(0, "/?hang=1"))
        health = client.health()[f"127.0.0.1:{upstream.ports[0]}"]
    assert health["pool"]["replaced"] == 0


def test_each_phase_timeout_is_the_time_left_when_the_transport_reads_it() -> None:
    now = time.monotonic()
    timeouts = LiveTimeouts({"connect": 5.0, "read": 0.5, "write": None}, now + 1.0, 0.2, now)
    assert timeouts.get("connect") == 0.2
    assert timeouts.get("read") == 0.5
    write = timeouts["write"]
    assert write is not None
    assert 0.9 < write <= 1.0
    assert dict(timeouts)["write"] == pytest.approx(1.0, abs=0.05)  # what a copy sees
    expired = LiveTimeouts({}, now - 1, None, now)
    assert expired.get("read") == 0.0
    unbounded = LiveTimeouts({"read": None}, None, 0.3, now)
    assert unbounded.get("read") is None
    assert unbounded.get("connect") == 0.3


async def test_timeout_connect_applies_without_any_deadline() -> None:
    seen: list[object] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"].get("connect"))
        return httpx.Response(200)

    settings = {"default": {"timeout": {"total": None, "attempt": None, "connect": 0.2}}}
    async with rc.AsyncClient(settings=settings, transport=httpx.MockTransport(handler)) as client:
        await client.get("http://service.example/")
    assert seen == [0.2]


async def test_the_callers_own_cancel_scope_still_wins_and_keeps_its_type(
    upstream: Upstream,
) -> None:
    # An asyncio.timeout shorter than our deadline must surface as the caller's
    # TimeoutError, not be mistaken for (or swallowed by) our own timers.
    async with rc.AsyncClient() as client:
        for url in (upstream.url(0, "/?hang=1"), upstream.url(0, "/?drip=0.02&size=100")):
            with rc.deadline(5.0), pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await client.get(url)
        # Deadline and caller's scope expiring together: either error, never a hang
        # or a stray cancellation afterwards.
        for _ in range(20):
            with rc.deadline(0.05), pytest.raises((TimeoutError, rc.DeadlineExceededError)):
                async with asyncio.timeout(0.05):
                    await client.get(upstream.url(0, "/?hang=1"))
        assert (await client.get(upstream.url(1))).status_code == 200
        assert client.health()[f"127.0.0.1:{upstream.ports[0]}"]["in_flight"] == 0


async def test_timeout_attempt_bounds_the_wait_for_headers_not_the_body(
    upstream: Upstream,
) -> None:
    # Headers at 0.3 s, then the body in 5 reads 0.1 s apart: the attempt limit (0.4 s)
    # is for getting a response; the body is bounded by the call's deadline.
    settings = {"default": {"timeout": {"attempt": 0.4, "total": 3.0}}}
    async with rc.AsyncClient(settings=settings) as client:
        response = await client.get(upstream.url(0, "/?delay=0.3&drip=0.1&size=5"))
    assert response.content == b"xxxxx"


def test_a_call_that_must_queue_on_trio_fails_with_a_clear_error() -> None:
    trio = pytest.importorskip("trio")
    settings = {
        "default": {"bulkhead": {"max_concurrent": 1}, "timeout": {"total": None, "attempt": None}}
    }

    async def handler(request: httpx.Request) -> httpx.Response:
        await trio.sleep(0.05)
        return httpx.Response(200)

    async def main() -> list[BaseException]:
        errors: list[BaseException] = []
        async with rc.AsyncClient(settings=settings, transport=httpx.MockTransport(handler)) as c:

            async def call() -> None:
                try:
                    await c.get("http://trio.example/")
                except RuntimeError as error:
                    errors.append(error)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                nursery.start_soon(call)
        return errors

    errors = trio.run(main)
    assert [str(e) for e in errors] == [
        "resilient_client.AsyncClient runs on asyncio only (trio is not supported)"
    ]


async def test_a_body_that_stalls_after_a_quick_start_still_ends_by_the_deadline(
    upstream: Upstream,
) -> None:
    # The first bytes come at once (no alarm is set for a body that reads quickly);
    # then one byte every 50 ms: the body's alarm must take over.
    async with rc.AsyncClient() as client:
        start = time.monotonic()
        with rc.deadline(0.3):
            async with client.stream("GET", upstream.url(0, "/?drip=0.05&size=100")) as response:
                with pytest.raises(rc.DeadlineExceededError):
                    await response.aread()
        assert time.monotonic() - start <= 0.3 + TOLERANCE


async def test_each_request_gets_the_phase_timeouts_it_asked_for() -> None:
    """The strategy reuses the phase bounds of the last timeouts seen: a change must show."""
    from resilient_client._settings import TimeoutPolicy
    from resilient_client._timeout import TimeoutStrategy

    strategy = TimeoutStrategy("svc", TimeoutPolicy(total=None, attempt=None, connect=0.5))
    seen: list[tuple[float | None, float | None]] = []

    for read in (2.0, 2.0, 7.0, None):
        request = httpx.Request("GET", "http://127.0.0.1:9/")
        request.extensions = {"timeout": httpx.Timeout(5.0, read=read).as_dict()}
        guard = strategy.begin(request, time.monotonic() + 60)
        timeouts = request.extensions["timeout"]
        seen.append((timeouts.get("read"), timeouts.get("connect")))
        guard.succeeded()
    # No read timeout of its own: the time left until the deadline bounds it.
    assert seen == [(2.0, 0.5), (2.0, 0.5), (7.0, 0.5), (pytest.approx(60, abs=1), 0.5)]


async def test_a_body_stalled_from_its_first_byte_ends_in_httpxs_timeout_at_the_deadline(
    upstream: Upstream,
) -> None:
    # The read timeout (30 s) is longer than the time left: the body's first read
    # starts at once, unwatched, and its timeout is the deadline's, worked out
    # when the body started. It must come out as DeadlineExceededError, caused by
    # httpx's ReadTimeout (no alarm of ours ended it).
    quiet = {"breaker": {"consecutive_failures": None}, "retry": {"attempts": 1}}
    async with rc.AsyncClient(timeout=30, settings={"default": quiet}) as client:
        start = time.monotonic()
        with rc.deadline(0.3), pytest.raises(rc.DeadlineExceededError) as caught:
            await client.get(upstream.url(0, "/?drip=5&size=2"))
        elapsed = time.monotonic() - start
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert "while reading the body" in str(caught.value)
    assert 0.3 - 0.005 <= elapsed <= 0.3 + TOLERANCE


@pytest.mark.parametrize("httpx_timeout", [5.0, 30.0])
async def test_a_small_body_read_at_once_sets_no_alarm_of_its_own(
    upstream: Upstream, httpx_timeout: float
) -> None:
    # Each attempt sets its backstop's alarm; a body read at once sets none,
    # whether its read timeout is shorter than the time left (5 s of the default
    # 10 s) or longer (30 s).
    from resilient_client._alarms import alarm_clock

    # A full collection of the test session's heap (45-110 ms here) between the
    # headers and the body would make a read start late, and be watched: freeze it.
    gc.collect()
    gc.freeze()
    try:
        async with rc.AsyncClient(timeout=httpx_timeout) as client:
            await client.get(upstream.url(0))
            before = alarm_clock().pending
            for _ in range(20):
                response = await client.get(upstream.url(0, "/?size=100"))
                assert response.content == b"x" * 100
            assert alarm_clock().pending - before == 20
    finally:
        gc.unfreeze()
