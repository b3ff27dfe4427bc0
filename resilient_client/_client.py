"""The httpx integration: ``AsyncClient``, an ``httpx.AsyncClient`` with a pipeline per dependency.

Everything httpx does around one request stays httpx's own: building requests,
auth flows, redirects, cookies, event hooks, streaming, ``send()``. The client
changes exactly two things, at the two places httpx lets a subclass in:

- ``send()`` opens a deadline scope of the dependency's ``timeout.total`` around
  the whole logical call (all redirects and auth round trips, and the body read);
- ``_transport_for_url()`` hands each request to its dependency's pipeline
  instead of httpx's one shared pool. httpx still decides the route (direct, a
  proxy from arguments or the environment, a user mount); the pipeline then uses
  a pool of the dependency's own for that route.
"""

from __future__ import annotations

import os
import ssl
import typing
from collections.abc import Mapping
from typing import Any

import httpx
from httpx._client import UseClientDefault
from httpx._types import (
    AuthTypes,
    CertTypes,
    CookieTypes,
    HeaderTypes,
    ProxyTypes,
    QueryParamTypes,
    TimeoutTypes,
)
from opentelemetry import metrics, trace

from ._cookies import ResponseCookies
from ._deadline import monotonic, pop_deadline, push_deadline
from ._pipeline import DependencyPipeline
from ._registry import DependencyRegistry
from ._settings import DependencyPolicy, ResilienceSettings, load_settings
from ._telemetry import Telemetry
from ._transports import HTTPXTransportFactory, Route, TransportFactory

__all__ = ["AsyncClient"]

SettingsTypes = ResilienceSettings | Mapping[str, Any] | str | os.PathLike[str] | None

# httpx's own defaults, restated so the signature matches httpx.AsyncClient's.
_HTTPX_DEFAULT_TIMEOUT = httpx.Timeout(5.0)
_HTTPX_DEFAULT_MAX_REDIRECTS = 20
_HTTPX_DEFAULT_KEEPALIVE_EXPIRY = 5.0
EventHook = typing.Callable[..., typing.Any]


class AsyncClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that isolates, bounds and times every dependency it calls.

    Takes every keyword ``httpx.AsyncClient`` takes, plus ``settings``: a
    :class:`ResilienceSettings`, a dict of the same shape, or the path of a TOML
    file. Without ``settings`` the ``RESILIENT_CLIENT_*`` environment variables
    and the library defaults apply, and every host gets the default policy with
    state of its own.

    ``limits``, when given, sizes each dependency's own pool (unless its ``pool``
    settings say otherwise) instead of one pool shared by every host.

    ``tracer_provider`` and ``meter_provider`` are the OpenTelemetry providers for
    this client's spans and metrics (default: the global ones, looked up on every
    call). See docs/telemetry.md.

    ``transport_factory`` replaces how each dependency's pool is built (it is
    called with the dependency's name, its pool limits and the proxy httpx chose
    for the route, or None); the default builds ``httpx.AsyncHTTPTransport``
    from this client's TLS, HTTP/2 and environment settings. A ``transport=``
    or ``mounts=`` transport is used as given instead, for the URLs it serves.
    """

    def __init__(
        self,
        *,
        settings: SettingsTypes = None,
        transport_factory: TransportFactory | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        auth: AuthTypes | None = None,
        params: QueryParamTypes | None = None,
        headers: HeaderTypes | None = None,
        cookies: CookieTypes | None = None,
        verify: ssl.SSLContext | str | bool = True,
        cert: CertTypes | None = None,
        http1: bool = True,
        http2: bool = False,
        proxy: ProxyTypes | None = None,
        mounts: Mapping[str, httpx.AsyncBaseTransport | None] | None = None,
        timeout: TimeoutTypes = _HTTPX_DEFAULT_TIMEOUT,
        follow_redirects: bool = False,
        limits: httpx.Limits | None = None,
        max_redirects: int = _HTTPX_DEFAULT_MAX_REDIRECTS,
        event_hooks: Mapping[str, list[EventHook]] | None = None,
        base_url: httpx.URL | str = "",
        transport: httpx.AsyncBaseTransport | None = None,
        trust_env: bool = True,
        default_encoding: str | typing.Callable[[bytes], str] = "utf-8",
    ) -> None:
        # Validate settings first: a bad setting should fail before anything is built.
        self._resilience_settings = load_settings(settings)
        self._client_limits = limits
        super().__init__(
            auth=auth,
            params=params,
            headers=headers,
            cookies=cookies,
            verify=verify,
            cert=cert,
            http1=http1,
            http2=http2,
            proxy=proxy,
            mounts=mounts,
            timeout=timeout,
            # No limits here: httpx would size its one shared pool with them, and
            # this client builds no such pool (see _pool_limits).
            follow_redirects=follow_redirects,
            max_redirects=max_redirects,
            event_hooks=event_hooks,
            base_url=base_url,
            transport=transport,
            trust_env=trust_env,
            default_encoding=default_encoding,
        )
        # The same store (a jar given as ``cookies`` stays the one the client fills),
        # minus the cost of handing it responses that set no cookie (_cookies.py).
        self._cookies = ResponseCookies(self._cookies.jar)
        self._transport_factory: TransportFactory = transport_factory or HTTPXTransportFactory(
            verify=verify,
            cert=cert,
            http1=http1,
            http2=http2,
            trust_env=trust_env,
        )
        if transport is None and isinstance(self._transport_factory, HTTPXTransportFactory):
            # As httpx does: pay for the TLS context (the CA bundle, tens of ms) here,
            # not inside the first call's deadline. With transport= it is built only
            # if a URL outside the user's transport ever needs a pool.
            self._transport_factory.ssl_context  # noqa: B018
        self._telemetry = Telemetry(
            self._resilience_settings.telemetry,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        self._registry = DependencyRegistry(self._resilience_settings, self._build_pipeline)
        self._telemetry.observe(self._registry.pipelines)

    @property
    def cookies(self) -> httpx.Cookies:
        """Cookie values to include when sending requests (as in httpx)."""
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: CookieTypes) -> None:
        self._cookies = ResponseCookies(cookies)

    @property
    def resilience_settings(self) -> ResilienceSettings:
        """The validated settings this client runs with."""
        return self._resilience_settings

    # -- where httpx builds its shared pools, stand route markers instead --------------

    def _init_transport(
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: CertTypes | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = httpx.Limits(),  # noqa: B008 - httpx's signature
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> httpx.AsyncBaseTransport:
        return transport if transport is not None else Route(proxy=None)

    def _init_proxy_transport(
        self,
        proxy: httpx.Proxy,
        verify: ssl.SSLContext | str | bool = True,
        cert: CertTypes | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = httpx.Limits(),  # noqa: B008 - httpx's signature
    ) -> httpx.AsyncBaseTransport:
        return Route(proxy=proxy)

    def _transport_for_url(self, url: httpx.URL) -> httpx.AsyncBaseTransport:
        return self._registry.resolve(url)

    def _route_for(self, url: httpx.URL) -> httpx.AsyncBaseTransport:
        # httpx's own choice: a Route marker, or a transport the user gave.
        return super()._transport_for_url(url)

    def _build_pipeline(
        self, name: str, policy: DependencyPolicy, named: bool
    ) -> DependencyPipeline:
        dependency = self._resilience_settings.dependencies.get(name) if named else None
        return DependencyPipeline(
            name,
            policy,
            named=named,
            critical=dependency is not None and dependency.critical,
            max_tracked_hosts=self._resilience_settings.max_tracked_hosts,
            route_for=self._route_for,
            transport_factory=self._transport_factory,
            limits=self._pool_limits(policy),
            telemetry=self._telemetry,
        )

    def _pool_limits(self, policy: DependencyPolicy) -> httpx.Limits:
        given = self._client_limits
        concurrent = policy.bulkhead.max_concurrent
        max_connections = policy.pool.max_connections
        if max_connections is None:
            # Headroom over the bulkhead: connections of cancelled calls can still be
            # closing when the next call comes in, and a call that has to queue in
            # httpcore's pool risks losing its slot if cancelled (httpcore #1093).
            max_connections = given.max_connections if given is not None else 2 * concurrent
        max_keepalive = policy.pool.max_keepalive
        if max_keepalive is None:
            # More idle connections than calls in flight would never be reused.
            max_keepalive = given.max_keepalive_connections if given is not None else concurrent
        return httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive,
            keepalive_expiry=(
                given.keepalive_expiry if given is not None else _HTTPX_DEFAULT_KEEPALIVE_EXPIRY
            ),
        )

    # -- the logical call ----------------------------------------------------------------

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: AuthTypes | UseClientDefault | None = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: bool | UseClientDefault = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        """Send a request, as httpx does, within its route's (or dependency's) ``timeout.total``.

        The budget covers redirects, auth round trips and (unless ``stream``)
        reading the body; a streamed body must be read within it too.
        """
        pipeline = self._registry.resolve(request.url)
        total = pipeline.strategies_for(request)[0].policy.total
        token = push_deadline(None if total is None else monotonic() + total)
        try:
            return await super().send(
                request, stream=stream, auth=auth, follow_redirects=follow_redirects
            )
        finally:
            pop_deadline(token)

    def health(self) -> dict[str, dict[str, Any]]:
        """Per dependency, a JSON-serialisable snapshot of its state, keyed by its name."""
        return {pipeline.name: pipeline.health() for pipeline in self._registry.pipelines()}

    async def aclose(self) -> None:
        """Close the client: httpx's transports and mounts, and every dependency's pools."""
        try:
            await super().aclose()
        finally:
            self._telemetry.close()
            await self._registry.aclose()

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await super().__aexit__(*exc_info)
        finally:
            self._telemetry.close()
            await self._registry.aclose()
