"""The upstream's fault profiles: each behaves as configured, reproducibly, on a real server."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

from resilient_client.testing._profiles import (
    Degradation,
    Latency,
    Outage,
    Profile,
    ProfileError,
    ProfileState,
    Throttle,
    profiles_from_json,
    profiles_to_json,
)
from resilient_client.testing._upstream import UpstreamProcess, UpstreamThread

pytestmark = pytest.mark.anyio


def _kinds(profile: Profile, seed: int, times: list[float]) -> list[str]:
    state = ProfileState(profile, seed, now=0.0)
    return [state.decide(now).counted_as for now in times]


# -- deciding, on a clock the test holds -----------------------------------------------------------


def test_the_same_seed_gives_the_same_answers_and_another_seed_others() -> None:
    profile = Profile(error_ratio=0.3, reset_ratio=0.05, latency=Latency(0.01, 0.5, 0.02, 1.0))
    times = [i * 0.001 for i in range(500)]
    first, again, other = (_kinds(profile, s, times) for s in (7, 7, 8))
    assert first == again
    assert first != other
    counts = Counter(first)
    # 30% errors and 5% resets of 500, within generous bounds.
    assert 100 <= counts["error"] <= 200
    assert 10 <= counts["reset"] <= 45


def test_restart_replays_the_same_draws() -> None:
    state = ProfileState(Profile(error_ratio=0.5, latency=Latency(0.02, 0.8)), 3, now=0.0)
    first = [state.decide(1.0) for _ in range(50)]
    state.restart(100.0)
    assert [state.decide(101.0) for _ in range(50)] == first


def test_latency_has_its_median_and_a_tail() -> None:
    import random

    latency = Latency(median=0.05, sigma=0.5, tail_ratio=0.05, tail=2.0)
    rng = random.Random(1)
    samples = sorted(latency.sample(rng) for _ in range(4000))
    assert 0.04 < samples[len(samples) // 2] < 0.065
    in_tail = sum(1 for s in samples if s >= 2.0)
    assert 120 <= in_tail <= 290  # 5% of 4000 is 200
    assert Latency(median=0.03).sample(rng) == 0.03


def test_an_outage_starts_and_ends_at_its_times() -> None:
    profile = Profile(outages=(Outage(start=1.0, end=2.0), Outage(3.0, 3.5, kind="reset")))
    state = ProfileState(profile, 0, now=10.0)
    assert state.decide(10.5).kind == "ok"
    during = state.decide(11.0)
    assert (during.kind, during.status, during.counted_as) == ("error", 503, "outage")
    assert state.decide(11.99).counted_as == "outage"
    assert state.decide(12.0).kind == "ok"
    assert state.decide(13.2).kind == "reset"
    assert state.decide(13.2).counted_as == "outage"
    assert state.decide(13.5).kind == "ok"


def test_the_throttle_admits_its_rate_then_answers_429_with_retry_after() -> None:
    state = ProfileState(Profile(throttle=Throttle(rate=10, retry_after=3)), 0, now=0.0)
    burst = [state.decide(0.0) for _ in range(15)]
    assert [a.kind for a in burst] == ["ok"] * 10 + ["throttled"] * 5
    assert (burst[-1].status, burst[-1].retry_after) == (429, 3)
    # A second later the bucket holds ten tokens again, never more.
    assert Counter(state.decide(1.0).kind for _ in range(15)) == {"ok": 10, "throttled": 5}


def test_degradation_grows_latency_and_errors_gradually() -> None:
    profile = Profile(
        latency=Latency(median=0.01),
        degradation=Degradation(start=10, end=20, latency_factor=11, error_ratio=0.8),
    )
    state = ProfileState(profile, 5, now=0.0)

    def sample(at: float) -> tuple[float, float]:
        actions = [state.decide(at) for _ in range(400)]
        errors = sum(a.kind == "error" for a in actions) / len(actions)
        ok_delays = [a.delay for a in actions if a.kind == "ok"]
        return errors, max(ok_delays)

    errors, delay = sample(5)
    assert errors == 0.0
    assert delay == pytest.approx(0.01)
    errors, delay = sample(15)
    assert 0.25 < errors < 0.55
    assert delay == pytest.approx(0.06)
    errors, delay = sample(60)
    assert 0.65 < errors < 0.92
    assert delay == pytest.approx(0.11)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"error_ratio": 1.5}, "error_ratio"),
        ({"error_ratio": 0.6, "reset_ratio": 0.6}, "add up to"),
        ({"latency": {"median": -1}}, "median"),
        ({"latency": {"p50": 1}}, "unknown field"),
        ({"outages": [{"start": 5, "end": 1}]}, "after its start"),
        ({"outages": [{"start": 0, "end": 1, "kind": "fire"}]}, "kind"),
        ({"throttle": {"rate": 0}}, "rate"),
        ({"degradation": {"start": 0, "end": 1, "latency_factor": 0.5}}, "latency_factor"),
        ({"colour": "red"}, "unknown field"),
    ],
)
def test_a_bad_profile_is_refused_with_the_field_named(
    data: dict[str, object], message: str
) -> None:
    with pytest.raises(ProfileError, match=message):
        Profile.from_dict(data)


def test_profiles_survive_their_json_form() -> None:
    profiles = [
        Profile(
            name="payments",
            latency=Latency(0.08, 0.55, 0.01, 1.0),
            error_ratio=0.01,
            throttle=Throttle(rate=50, retry_after=1, burst=5),
            outages=(Outage(2, 4), Outage(6, 7, kind="hang")),
            degradation=Degradation(1, 2, 3.0, 0.1),
        ),
        None,
    ]
    assert profiles_from_json(profiles_to_json(profiles)) == profiles


# -- served, on 127.0.0.1 ------------------------------------------------------------------------


async def _statuses(client: httpx.AsyncClient, url: str, count: int) -> list[str]:
    outcomes = []
    for _ in range(count):
        try:
            outcomes.append(str((await client.get(url)).status_code))
        except httpx.TransportError as exc:
            outcomes.append(type(exc).__name__)
    return outcomes


async def test_served_answers_follow_the_profile_and_replay_after_a_restart() -> None:
    profile = Profile(name="flaky", error_ratio=0.3, reset_ratio=0.1)
    with UpstreamThread(profiles=[profile], seed=11) as upstream:
        async with httpx.AsyncClient(trust_env=False) as client:
            first = await _statuses(client, upstream.url(0, "/?status=200"), 60)
            upstream.restart_clock(upstream.ports[0])
            again = await _statuses(client, upstream.url(0), 60)
        stats = upstream.stats()["ports"][str(upstream.ports[0])]
    # The query string is ignored on a profile port; the sequence repeats after a restart.
    assert first == again
    counts = Counter(first)
    assert 8 <= counts["503"] <= 30
    assert 1 <= counts["RemoteProtocolError"] + counts["ReadError"] <= 15
    assert stats["profile"] == "flaky"
    assert sum(stats["outcomes"].values()) == 60
    assert stats["outcomes"]["error"] == counts["503"]
    assert sum(sum(slot.values()) for slot in stats["timeline"].values()) == 60


async def test_served_latency_is_never_shorter_than_the_profile_says() -> None:
    profile = Profile(latency=Latency(median=0.05))
    with UpstreamThread(profiles=[profile]) as upstream:
        async with httpx.AsyncClient(trust_env=False) as client:
            for _ in range(3):
                start = time.perf_counter()
                assert (await client.get(upstream.url(0))).status_code == 200
                assert time.perf_counter() - start >= 0.05


async def test_a_hang_lasts_until_the_client_gives_up_then_its_connection_closes() -> None:
    profile = Profile(hang_ratio=1.0, hang_for=60)
    with UpstreamThread(profiles=[profile]) as upstream:
        async with httpx.AsyncClient(trust_env=False, timeout=0.3) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(upstream.url(0))
        # The client closed its connection, so the server's handler ended well before hang_for.
        for _ in range(100):
            if upstream.open_connections == 0:
                break
            await asyncio.sleep(0.05)
        assert upstream.open_connections == 0
        assert upstream.stats()["ports"][str(upstream.ports[0])]["outcomes"] == {"hang": 1}


async def test_a_drip_sends_the_headers_then_the_body_slowly() -> None:
    profile = Profile(drip_ratio=1.0, drip_interval=0.05, drip_bytes=4)
    with UpstreamThread(profiles=[profile]) as upstream:
        async with httpx.AsyncClient(trust_env=False) as client:
            start = time.perf_counter()
            async with client.stream("GET", upstream.url(0)) as response:
                headers_at = time.perf_counter() - start
                body = await response.aread()
            total = time.perf_counter() - start
    assert response.status_code == 200
    assert body == b"xxxx"
    assert total >= 0.2
    assert headers_at < total


async def test_throttled_requests_get_429_with_retry_after() -> None:
    profile = Profile(throttle=Throttle(rate=5, retry_after=2))
    with UpstreamThread(profiles=[profile]) as upstream:
        async with httpx.AsyncClient(trust_env=False) as client:
            responses = [await client.get(upstream.url(0)) for _ in range(8)]
    assert [r.status_code for r in responses[:5]] == [200] * 5
    limited = [r for r in responses if r.status_code == 429]
    # The bucket refills at 5/s while the requests go out, so a few may slip through.
    assert 1 <= len(limited) <= 3
    assert all(r.headers["retry-after"] == "2" for r in limited)


async def test_an_outage_in_its_own_process_counted_over_time() -> None:
    profiles = [Profile(name="dep", outages=(Outage(start=0.3, end=0.6),)), None]
    async with UpstreamProcess(profiles=profiles, bucket=0.05) as upstream:
        async with httpx.AsyncClient(trust_env=False) as client:
            await upstream.restart_clock(0)
            start = time.perf_counter()
            seen: list[tuple[float, int]] = []
            # Bounded by count and by time.
            for _ in range(400):
                elapsed = time.perf_counter() - start
                if elapsed > 0.9:
                    break
                seen.append((elapsed, (await client.get(upstream.url(0))).status_code))
                await asyncio.sleep(0.01)
            query_port = await client.get(upstream.url(1, "/?status=429"))
        stats = await upstream.stats()
    assert query_port.status_code == 429
    # The server's clock started a moment before ours, so judge well inside each phase.
    assert all(status == 200 for at, status in seen if at < 0.25)
    assert all(status == 503 for at, status in seen if 0.32 < at < 0.55)
    assert all(status == 200 for at, status in seen if at > 0.65)
    dep = stats["ports"][str(upstream.ports[0])]
    assert dep["profile"] == "dep"
    assert dep["outcomes"]["outage"] == sum(status == 503 for _, status in seen)
    assert sum(dep["outcomes"].values()) == len(seen)
    assert stats["bucket"] == 0.05
    outage_buckets = [int(i) for i, slot in dep["timeline"].items() if "outage" in slot]
    assert outage_buckets
    assert min(outage_buckets) >= 5
    assert max(outage_buckets) <= 12
    assert stats["ports"][str(upstream.ports[1])]["outcomes"] == {"throttled": 1}
    assert upstream.returncode is not None


async def test_setting_a_port_clock_moves_its_timeline_and_keeps_its_counts() -> None:
    async with UpstreamProcess(profiles=[Profile(name="dep")], bucket=0.1) as upstream:
        async with httpx.AsyncClient(trust_env=False) as client:
            await upstream.restart_clock(0)
            await client.get(upstream.url(0))
            # As a client measured in segments does: its next segment is 5 s into its run.
            await upstream.set_clock(0, at=5.0)
            await client.get(upstream.url(0))
        stats = await upstream.stats()
    dep = stats["ports"][str(upstream.ports[0])]
    assert dep["outcomes"] == {"ok": 2}
    first, second = sorted(int(bucket) for bucket in dep["timeline"])
    # Buckets of 0.1 s; the shared machine may delay a request by a bucket or two.
    assert first < 10
    assert 50 <= second < 60


def test_the_process_takes_either_ports_or_profiles() -> None:
    with pytest.raises(ValueError, match="give one or other"):
        UpstreamProcess(3, profiles=[Profile()])
    assert UpstreamProcess(profiles=[Profile(), None])._count == 2
