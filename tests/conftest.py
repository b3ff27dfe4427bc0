"""Shared fixtures: a real fault-injecting HTTP/1.1 upstream on 127.0.0.1, asyncio only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from resilient_client.testing._upstream import Upstream, UpstreamProcess, UpstreamThread


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # asyncio is the supported event loop (see docs/architecture.md).
    return "asyncio"


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """Two ports on 127.0.0.1, served from their own thread and event loop.

    Each port is a distinct dependency to the client (``127.0.0.1:<port>``).
    """
    with UpstreamThread(ports=2) as server:
        yield server


@pytest.fixture(scope="session")
async def upstream_ports() -> AsyncIterator[list[int]]:
    """Two ports of an upstream in its own process, for tests that measure latency.

    A server thread would share the client's GIL and add its switch interval to
    every hand-over; a process does not. Shared by the session: don't count on
    its request counters.
    """
    async with UpstreamProcess(ports=2) as server:
        yield server.ports


@pytest.fixture
def clean_resilience_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RESILIENT_CLIENT_* variables from the machine leak into a test."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("RESILIENT_CLIENT_"):
            monkeypatch.delenv(name)
