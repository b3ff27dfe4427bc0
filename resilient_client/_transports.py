"""The transports under the resilience layer: one connection pool per dependency.

httpx gives a client one pool shared by every host, so one slow host can take
every connection. Here each dependency gets its own transport, built from the
client's own connection settings (TLS, HTTP/2, proxies from arguments or the
environment) by a :class:`TransportFactory`. Nothing above this module looks
inside a transport: any ``httpx.AsyncBaseTransport`` can sit here.

httpx decides *which* route a URL takes (direct, or through which proxy); this
module stands :class:`Route` markers where httpx would build a shared pool, and
each dependency builds its own pool for the route when a request first uses it.
Transports the user passes (``transport=``, ``mounts=``) are used as given.
"""

from __future__ import annotations

import ssl
from typing import Protocol

import httpx
from httpx._types import CertTypes

__all__ = ["HTTPXTransportFactory", "Route", "TransportFactory"]


class Route(httpx.AsyncBaseTransport):
    """Where httpx would have put its own shared pool: direct (``proxy`` None) or a proxy.

    It carries no connections. A dependency pipeline maps it to the dependency's
    own transport for that route; it is never sent a request itself.
    """

    def __init__(self, proxy: httpx.Proxy | None) -> None:
        self.proxy = proxy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError(
            "a resilient_client route marker was sent a request directly; "
            "requests go through the dependency pipeline"
        )

    def __repr__(self) -> str:
        return f"<Route {'direct' if self.proxy is None else str(self.proxy.url)}>"


class TransportFactory(Protocol):
    """Builds the transport one dependency uses for one route."""

    def __call__(
        self, dependency: str, limits: httpx.Limits, proxy: httpx.Proxy | None
    ) -> httpx.AsyncBaseTransport: ...


class HTTPXTransportFactory:
    """httpx's own transport, configured like the client would configure it.

    One TLS context serves every dependency: building one loads the CA bundle,
    which costs tens of milliseconds and memory per pool. It is built when the
    first pool is, so a client that only uses its own ``transport=`` (tests with
    ``MockTransport``, ASGI apps) never pays for it, as with httpx.
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool,
        cert: CertTypes | None,
        http1: bool,
        http2: bool,
        trust_env: bool,
    ) -> None:
        self._verify = verify
        self._cert = cert
        self._ssl_context: ssl.SSLContext | None = None
        self.http1 = http1
        self.http2 = http2
        self.trust_env = trust_env

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context(
                verify=self._verify, cert=self._cert, trust_env=self.trust_env
            )
        return self._ssl_context

    def __call__(
        self, dependency: str, limits: httpx.Limits, proxy: httpx.Proxy | None
    ) -> httpx.AsyncBaseTransport:
        return httpx.AsyncHTTPTransport(
            verify=self.ssl_context,
            http1=self.http1,
            http2=self.http2,
            limits=limits,
            proxy=proxy,
            trust_env=self.trust_env,
        )
