"""Per-host state in a named dependency: one bad host is cut off, its siblings keep serving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import resilient_client as rc
from resilient_client._exceptions import CircuitOpenError
from resilient_client._hosts import HostStates
from resilient_client._settings import BreakerPolicy
from resilient_client.testing._upstream import Upstream

pytestmark = pytest.mark.usefixtures("clean_resilience_env")


def _two_hosts(upstream: Upstream) -> dict[str, Any]:
    return {
        "dependencies": {
            "api": {
                "hosts": [f"127.0.0.1:{port}" for port in upstream.ports],
                "breaker": {"consecutive_failures": 3, "open_for": 5.0},
                "retry": {"attempts": 1},
            }
        }
    }


@pytest.mark.anyio
async def test_one_failing_host_is_cut_off_and_its_sibling_keeps_serving(
    upstream: Upstream,
) -> None:
    bad, good = (upstream.url(index, "/") for index in (0, 1))
    async with rc.AsyncClient(settings=_two_hosts(upstream)) as client:
        for _ in range(3):
            assert (await client.get(bad + "?status=503")).status_code == 503
        with pytest.raises(rc.CircuitOpenError, match=f"host '127.0.0.1:{upstream.ports[0]}'"):
            await client.get(bad)
        for _ in range(5):
            assert (await client.get(good)).status_code == 200
        health = client.health()["api"]
        assert health["usable"] is True
        assert health["breaker"] == {"state": "closed", "hosts_open": 1, "hosts": 2}
        hosts = health["hosts"]
        assert hosts[f"127.0.0.1:{upstream.ports[0]}"]["breaker"]["state"] == "open"
        assert hosts[f"127.0.0.1:{upstream.ports[1]}"]["breaker"]["state"] == "closed"
        # Only when every host is open is the dependency unusable.
        for _ in range(3):
            await client.get(good + "?status=503")
        health = client.health()["api"]
        assert health["usable"] is False
        assert health["breaker"]["state"] == "open"
    assert upstream.received[upstream.ports[0]] == 3


@pytest.mark.anyio
async def test_a_429_from_one_host_throttles_only_that_host(upstream: Upstream) -> None:
    async with rc.AsyncClient(settings=_two_hosts(upstream)) as client:
        await client.get(upstream.url(0, "/?status=429"))
        hosts = client.health()["api"]["hosts"]
        assert hosts[f"127.0.0.1:{upstream.ports[0]}"]["throttle"]["throttled"] == 1
        await client.get(upstream.url(1))
        hosts = client.health()["api"]["hosts"]
        assert hosts[f"127.0.0.1:{upstream.ports[1]}"]["throttle"] == {
            "rate": None,
            "ceiling": None,
            "throttled": 0,
        }


@pytest.mark.anyio
async def test_a_host_of_its_own_keeps_the_health_it_always_had(upstream: Upstream) -> None:
    async with rc.AsyncClient() as client:
        await client.get(upstream.url(0))
        health = client.health()[f"127.0.0.1:{upstream.ports[0]}"]
    assert "hosts" not in health
    assert health["breaker"]["state"] == "closed"
    assert set(health["throttle"]) == {"rate", "ceiling", "throttled"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


HOSTS = ["a.internal", "b.internal", "c.internal", "d.internal"]
MAX_TRACKED = 3


class HostStatesModel(RuleBasedStateMachine):
    """Per-host breakers against a model: hosts never affect each other; the dependency
    is open exactly when every tracked host is; at most MAX_TRACKED hosts are kept."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        policy = BreakerPolicy(
            consecutive_failures=2, open_for=1.0, open_for_growth=0, open_for_jitter=0
        )
        self.states = HostStates(
            "api", policy, single=False, max_tracked=MAX_TRACKED, clock=self.clock
        )
        # Per host: consecutive failures, and when its open period ends (None: closed).
        self.failures: dict[str, int] = {}
        self.open_until: dict[str, float | None] = {}
        self.tracked: list[str] = []  # least recently used first

    def _touch(self, host: str) -> None:
        if host in self.tracked:
            self.tracked.remove(host)
        self.tracked.append(host)
        if len(self.tracked) > MAX_TRACKED:
            dropped = self.tracked.pop(0)
            self.failures.pop(dropped, None)
            self.open_until.pop(dropped, None)

    def _expected(self, host: str) -> str:
        until = self.open_until.get(host)
        if until is None:
            return "closed"
        return "open" if self.clock.now < until else "half_open"

    @rule(host=st.sampled_from(HOSTS), failed=st.booleans())
    def call(self, host: str, failed: bool) -> None:
        state = self.states.for_url(httpx.URL(f"http://{host}/"))
        self._touch(host)
        expected = self._expected(host)
        try:
            permit = state.breaker.admit()
        except CircuitOpenError:
            assert expected == "open"
            return
        assert expected in ("closed", "half_open")
        if failed:
            state.breaker.record_failure(permit)
            if expected == "half_open":
                self.open_until[host] = self.clock.now + 1.0
            else:
                self.failures[host] = self.failures.get(host, 0) + 1
                if self.failures[host] >= 2:
                    self.open_until[host] = self.clock.now + 1.0
        else:
            state.breaker.record_success(permit)
            self.failures[host] = 0
            if expected == "half_open":
                self.open_until[host] = None

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 2.0]))
    def wait(self, seconds: float) -> None:
        self.clock.now += seconds

    @precondition(lambda self: bool(self.tracked))
    @invariant()
    def each_host_is_judged_alone(self) -> None:
        for state in self.states.states():
            host = state.name.split(":")[0]
            assert state.breaker.state == self._expected(host), host

    @invariant()
    def the_dependency_is_open_only_when_every_host_is(self) -> None:
        expected = {self._expected(host) for host in self.tracked}
        if not expected or "closed" in expected:
            assert self.states.state == "closed"
        elif "half_open" in expected:
            assert self.states.state == "half_open"
        else:
            assert self.states.state == "open"

    @invariant()
    def the_table_is_bounded(self) -> None:
        names = [state.name.split(":")[0] for state in self.states.states()]
        assert names == self.tracked


TestHostStates = HostStatesModel.TestCase
TestHostStates.settings = hypothesis_settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
