"""The clients the bench compares, each behind one small interface.

=================  ===================================================================
``httpx``          bare ``httpx.AsyncClient()``: one shared pool, httpx's timeouts
``hand-written``   httpx + tenacity + pybreaker + a semaphore per host, as services
                   write it by hand today
``defaults``       ``resilient_client.AsyncClient()`` with its default settings
``settings``       ``resilient_client.AsyncClient(settings=...)`` with the user's file
=================  ===================================================================

Each run gets a fresh client from :attr:`ClientSpec.build`; :func:`close_client`
bounds its closing. The library is used only through its public API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import pybreaker
import tenacity
from httpx._config import DEFAULT_LIMITS

from .. import AsyncClient, ResilienceSettings

__all__ = [
    "CLIENTS",
    "LABELS",
    "ClientSpec",
    "ClientUnderTest",
    "client_specs",
    "close_client",
]

# Closing only closes sockets; longer than this means something is stuck.
_CLOSE_TIMEOUT = 10.0


class ClientUnderTest(Protocol):
    """What the bench needs of a client: a GET, its breakers' states, and closing."""

    async def get(self, url: str) -> httpx.Response: ...

    def sample(self) -> dict[str, dict[str, Any]]:
        """Per dependency (``host:port``): breaker ``state`` and whatever else it can tell."""
        ...

    def describe(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class _Bare:
    """``httpx.AsyncClient()`` as most code uses it: one shared pool, no breaker."""

    def __init__(self) -> None:
        # trust_env=False only keeps environment proxies away from the 127.0.0.1 traffic.
        self._client = httpx.AsyncClient(trust_env=False)

    async def get(self, url: str) -> httpx.Response:
        return await self._client.get(url)

    def sample(self) -> dict[str, dict[str, Any]]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {
            "pool": f"one pool of {DEFAULT_LIMITS.max_connections} connections for all hosts",
            "timeout": "httpx's default: 5 s per phase (connect, read, write, pool wait)",
        }

    async def aclose(self) -> None:
        await self._client.aclose()


class _Retryable(Exception):
    """A response the hand-written retry loop treats as a failure."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


_HAND_RETRY_STATUS = frozenset({429, 502, 503, 504})


class _HandWritten:
    """The composition services write by hand today, which the library replaces.

    httpx with tenacity (3 retries, full-jitter exponential backoff on 429/5xx
    and transport errors), a pybreaker breaker (5 consecutive failures, open
    for 5 s) and an ``asyncio.Semaphore(50)`` per host. pybreaker's own async
    support needs Tornado, so the breaker wraps the await with ``calling()``,
    which does count async failures. What it lacks is what the comparison shows:
    no retry budget, no deadline across attempts, one shared connection pool,
    no Retry-After.
    """

    def __init__(self) -> None:
        self._client = httpx.AsyncClient(trust_env=False)
        self._hosts: dict[str, tuple[asyncio.Semaphore, pybreaker.CircuitBreaker]] = {}

    def _guards(self, url: str) -> tuple[asyncio.Semaphore, pybreaker.CircuitBreaker]:
        host = httpx.URL(url).netloc.decode("ascii")
        guards = self._hosts.get(host)
        if guards is None:
            breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=5, name=host)
            guards = self._hosts[host] = (asyncio.Semaphore(50), breaker)
        return guards

    async def get(self, url: str) -> httpx.Response:
        semaphore, breaker = self._guards(url)
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(4),
            wait=tenacity.wait_random_exponential(multiplier=0.05, max=2),
            retry=tenacity.retry_if_exception_type((httpx.TransportError, _Retryable)),
            reraise=True,
        )
        async with semaphore:
            try:
                async for attempt in retrying:
                    with attempt, breaker.calling():
                        response = await self._client.get(url)
                        if response.status_code in _HAND_RETRY_STATUS:
                            raise _Retryable(response)
            except _Retryable as exc:
                return exc.response  # retries used up: the caller sees the last answer
        return response

    def sample(self) -> dict[str, dict[str, Any]]:
        return {
            host: {"state": breaker.current_state.replace("_", "-")}
            for host, (_, breaker) in self._hosts.items()
        }

    def describe(self) -> dict[str, Any]:
        return {
            "retry": "tenacity: 4 attempts, wait_random_exponential(0.05, max 2 s), "
            "on transport errors and 429/502/503/504",
            "breaker": "pybreaker: fail_max 5, reset_timeout 5 s",
            "bulkhead": "asyncio.Semaphore(50) per host",
            "pool": "one httpx pool of 100 connections for all hosts",
        }

    async def aclose(self) -> None:
        await self._client.aclose()


class _Resilient:
    """``resilient_client.AsyncClient`` with the given settings (None: defaults)."""

    def __init__(self, settings: ResilienceSettings | None) -> None:
        self._client = AsyncClient(trust_env=False, settings=settings)

    async def get(self, url: str) -> httpx.Response:
        return await self._client.get(url)

    def sample(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "state": health["breaker"]["state"],
                "in_flight": health["in_flight"],
                "queued": health["queued"],
                # A named dependency of several hosts has a throttle per host.
                "throttle_rate": health.get("throttle", {}).get("rate"),
            }
            for name, health in self._client.health().items()
        }

    def describe(self) -> dict[str, Any]:
        policy = self._client.resilience_settings.default
        return {"default_policy": policy.model_dump(mode="json")}

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One column of the comparison: a short key, a label, and how to build a fresh client."""

    key: str
    label: str
    build: Callable[[], ClientUnderTest]


# The clients' keys (as --clients takes them) and labels, in the order they are compared.
LABELS = {
    "httpx": "bare httpx",
    "hand-written": "httpx+tenacity+pybreaker",
    "defaults": "resilient (defaults)",
    "settings": "resilient (your settings)",
}
CLIENTS = tuple(LABELS)


def client_specs(
    keys: Sequence[str], settings: ResilienceSettings | None = None
) -> list[ClientSpec]:
    """The clients to compare, in the order given; ``settings`` is needed for ``settings``."""
    if "settings" in keys and settings is None:
        raise ValueError("the 'settings' client needs settings (--settings FILE)")
    builders: dict[str, Callable[[], ClientUnderTest]] = {
        "httpx": _Bare,
        "hand-written": _HandWritten,
        "defaults": lambda: _Resilient(None),
        "settings": lambda: _Resilient(settings),
    }
    unknown = [key for key in keys if key not in builders]
    if unknown:
        raise ValueError(f"unknown client {unknown[0]!r}; choose from {', '.join(CLIENTS)}")
    return [ClientSpec(key, LABELS[key], builders[key]) for key in keys]


async def close_client(client: ClientUnderTest) -> None:
    """Close ``client``, failing with TimeoutError if that takes longer than closing should."""
    async with asyncio.timeout(_CLOSE_TIMEOUT):
        await client.aclose()
