"""Per-host state inside a dependency: one host's failures cut off that host, not its siblings.

A named dependency can match several hosts (``hosts = ["a.internal",
"b.internal"]``, or a ``*.suffix`` pattern). Each host it calls gets a circuit
breaker and an adaptive throttle of its own, as Envoy's outlier detection
ejects one host of a cluster: a host answering 503 is cut off while its
siblings go on serving, and a 429 from one host slows only that host. The
dependency as a whole is unusable only when every host it tracks is open.

What protects the caller, or a quota given for the whole dependency, stays per
dependency: the bulkhead, the retry budget, the configured rate limit and the
pools.

A dependency of one host (every host without a named dependency is one) has
one state and no lookup. A named dependency keeps at most ``max_tracked``
hosts, the least recently used dropped first: a dropped host starts afresh,
like a host dropped from the registry's table.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx

from ._breaker import BreakerState, CircuitBreaker
from ._settings import BreakerPolicy
from ._throttle import AdaptiveThrottle

__all__ = ["HostState", "HostStates", "host_key", "host_name"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def host_key(url: httpx.URL) -> tuple[str, int | None]:
    """``(host, port)`` of a URL as host patterns spell them (IPv6 in brackets)."""
    host = url.raw_host.decode("ascii").lower().rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    return host, url.port or _DEFAULT_PORTS.get(url.scheme)


def host_name(key: tuple[str, int | None]) -> str:
    """``host:port`` (or ``host``) of a :func:`host_key`: how a host's state is named."""
    host, port = key
    return host if port is None else f"{host}:{port}"


class HostState:
    """What the client has learnt of one host: its breaker and its throttle."""

    __slots__ = ("breaker", "name", "throttle")

    def __init__(
        self,
        dependency: str,
        name: str,
        policy: BreakerPolicy,
        *,
        own: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        # A host of a named dependency says which host in its errors and logs.
        self.breaker = CircuitBreaker(dependency, policy, host=None if own else name, clock=clock)
        self.throttle = AdaptiveThrottle(dependency, clock=clock)


class HostStates:
    """The per-host state of one dependency; ``for_url()`` once per call."""

    def __init__(
        self,
        dependency: str,
        policy: BreakerPolicy,
        *,
        single: bool,
        max_tracked: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dependency = dependency
        self._policy = policy
        self._max_tracked = max_tracked
        self._clock = clock
        # A dependency of one host: that host's state, for every URL.
        self._only = (
            HostState(dependency, dependency, policy, own=True, clock=clock) if single else None
        )
        self._hosts: OrderedDict[tuple[str, int | None], HostState] = OrderedDict()

    def for_url(self, url: httpx.URL) -> HostState:
        """The state of the URL's host (made at its first call)."""
        if self._only is not None:
            return self._only
        key = host_key(url)
        state = self._hosts.get(key)
        if state is not None:
            self._hosts.move_to_end(key)
            return state
        state = self._hosts[key] = HostState(
            self._dependency, host_name(key), self._policy, own=False, clock=self._clock
        )
        if len(self._hosts) > self._max_tracked:
            self._hosts.popitem(last=False)
        return state

    def states(self) -> list[HostState]:
        """Every host's state now (a snapshot: safe from a metric reader's thread)."""
        return [self._only] if self._only is not None else list(self._hosts.values())

    @property
    def state(self) -> BreakerState:
        """The dependency's state: open only when every host it tracks is open.

        ``closed`` while any host is closed (or none was called yet), else
        ``half_open`` while any is probing.
        """
        states = {host.breaker.state for host in self.states()}
        if not states or "closed" in states:
            return "closed"
        return "half_open" if "half_open" in states else "open"

    def health(self) -> dict[str, Any]:
        """The breaker and throttle, of the one host or per host, as health() shows them."""
        if self._only is not None:
            return {
                "breaker": self._only.breaker.health(),
                "throttle": self._only.throttle.health(),
            }
        hosts = self.states()
        return {
            "breaker": {
                "state": self.state,
                "hosts_open": sum(host.breaker.state == "open" for host in hosts),
                "hosts": len(hosts),
            },
            "hosts": {
                host.name: {"breaker": host.breaker.health(), "throttle": host.throttle.health()}
                for host in hosts
            },
        }
