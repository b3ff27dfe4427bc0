"""The receiving side of a hop, for ASGI services: context in, readiness out.

:class:`ResilienceMiddleware` reads what the caller sent along with a request
(W3C trace context and baggage, the time the caller has left, the request id)
into the context the application runs in, so the calls a handler makes through
:class:`~resilient_client.AsyncClient` carry them on to the next service.

:class:`HealthEndpoint` serves ``client.health()`` as a readiness probe.

Both are plain ASGI 3 applications: no framework is imported here, and they work
under Starlette, FastAPI or any ASGI server as they are.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any, Final, Literal, TypeAlias

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from pydantic import ValidationError

from ._client import AsyncClient, SettingsTypes
from ._correlation import (
    bind_request_id,
    clean_request_id,
    new_request_id,
    parse_time_left,
    unbind_request_id,
)
from ._deadline import monotonic, pop_deadline, push_deadline
from ._exceptions import SettingsError
from ._settings import TelemetrySettings, load_settings

__all__ = [
    "ASGIApp",
    "HealthEndpoint",
    "Message",
    "Receive",
    "ResilienceMiddleware",
    "Scope",
    "Send",
]

# The ASGI 3 callable's shape, spelled as Starlette spells it, so either side's
# type checker accepts the other's apps and middleware classes.
Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

# ASGI's header list: (name, value) pairs of bytes, names lower-cased by the server.
_Headers: TypeAlias = Iterable[Sequence[bytes]]

_log = logging.getLogger("resilient_client.asgi")


class _Default(enum.Enum):
    """Marks a keyword argument that was not given (None is a meaningful value here)."""

    FROM_SETTINGS = enum.auto()


FROM_SETTINGS: Final = _Default.FROM_SETTINGS
_FromSettings: TypeAlias = Literal[_Default.FROM_SETTINGS]


class _HeaderGetter(Getter[list[tuple[bytes, bytes]]]):
    """Lets OpenTelemetry's propagators read ASGI's list of byte pairs."""

    def get(self, carrier: list[tuple[bytes, bytes]], key: str) -> list[str] | None:
        wanted = key.lower().encode("latin-1")
        values = [value.decode("latin-1") for name, value in carrier if name.lower() == wanted]
        return values or None

    def keys(self, carrier: list[tuple[bytes, bytes]]) -> list[str]:
        return [name.decode("latin-1") for name, _ in carrier]


_GETTER: Final = _HeaderGetter()


class ResilienceMiddleware:
    """Binds the caller's trace context, deadline and request id while a request is handled.

    For each HTTP request and WebSocket connection, around the application call:

    - **trace context**: W3C ``traceparent``/``tracestate`` and baggage are
      extracted from the request headers (with the globally configured
      propagator) and attached, unless a span is already current. That is the
      case when OpenTelemetry's own ASGI instrumentation runs outside this
      middleware: it has extracted them already and started the SERVER span,
      and this middleware then adds nothing. It never starts a span itself.
      Put OpenTelemetry's middleware outside this one: inside, it would find
      the caller's context current and make an INTERNAL span, not a SERVER one.
    - **deadline**: the caller's time left (``deadline_header``, whole
      milliseconds) is capped at ``max_deadline`` seconds and becomes the
      deadline (``rc.current_deadline()``) of every call made through a
      resilient client while handling the request. A value that is not a count
      of milliseconds is ignored; ``0`` means the caller has already given up.
    - **request id**: the caller's (``request_id_header``), or a new one when it
      is missing or unfit to forward; bound for logs and outgoing calls, and
      echoed in the response unless ``echo_request_id`` is false or the
      application set that header itself.

    Defaults come from ``settings`` (a :class:`ResilienceSettings`, a dict, a
    TOML path, or None for the environment and library defaults), section
    ``telemetry``; keyword arguments given here win. A header name of None
    turns that header off: no deadline is read, or no request id is read or
    echoed (one is still created and bound, so the request's log records and
    calls share it). Other scopes (``lifespan``) pass straight through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: SettingsTypes = None,
        deadline_header: str | _FromSettings | None = FROM_SETTINGS,
        request_id_header: str | _FromSettings | None = FROM_SETTINGS,
        max_deadline: float | _FromSettings = FROM_SETTINGS,
        echo_request_id: bool = True,
    ) -> None:
        self.app = app
        telemetry = _telemetry(
            load_settings(settings).telemetry,
            deadline_header=deadline_header,
            request_id_header=request_id_header,
            max_incoming_deadline=max_deadline,
        )
        self.deadline_header = telemetry.deadline_header
        self.request_id_header = telemetry.request_id_header
        self.max_deadline = telemetry.max_incoming_deadline
        self.echo_request_id = echo_request_id and telemetry.request_id_header is not None
        # ASGI servers hand over header names lower-cased; compare as they come.
        self._deadline_name = _header_key(telemetry.deadline_header)
        self._request_id_name = _header_key(telemetry.request_id_header)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = [(bytes(name), bytes(value)) for name, value in scope.get("headers", ())]
        seconds, request_id = self._read(headers)

        trace_token = None
        # A valid current span means an outer layer (OpenTelemetry's ASGI
        # instrumentation) already extracted the caller's context and made the
        # SERVER span; extracting again would put the caller's span back in
        # place of that span.
        if not trace.get_current_span().get_span_context().is_valid:
            # Into the current context, not the root: keeps whatever else is in it.
            extracted = propagate.extract(headers, otel_context.get_current(), getter=_GETTER)
            trace_token = otel_context.attach(extracted)
        try:
            deadline_token = push_deadline(None if seconds is None else monotonic() + seconds)
            try:
                id_token = bind_request_id(request_id)
                try:
                    if self.echo_request_id:
                        send = _echoing(send, self._request_id_name, request_id)
                    await self.app(scope, receive, send)
                finally:
                    unbind_request_id(id_token)
            finally:
                pop_deadline(deadline_token)
        finally:
            if trace_token is not None:
                otel_context.detach(trace_token)

    def _read(self, headers: list[tuple[bytes, bytes]]) -> tuple[float | None, str]:
        """The caller's time left (capped; None: no deadline) and the request id to bind."""
        seconds: float | None = None
        request_id: str | None = None
        for name, raw in headers:
            lowered = name.lower()
            if lowered == self._deadline_name:
                value = parse_time_left(raw.decode("latin-1"))
                if value is None:
                    _log.debug("ignoring invalid %s header: %r", self.deadline_header, raw)
                # Sent twice (a proxy added one): the shorter one is the real limit.
                elif seconds is None or value < seconds:
                    seconds = value
            elif lowered == self._request_id_name and request_id is None:
                request_id = clean_request_id(raw.decode("latin-1"))
                if request_id is None:
                    _log.debug("replacing invalid %s header: %r", self.request_id_header, raw)
        if seconds is not None:
            seconds = min(seconds, self.max_deadline)
        return seconds, request_id if request_id is not None else new_request_id()


def _telemetry(
    base: TelemetrySettings,
    **given: str | float | _FromSettings | None,
) -> TelemetrySettings:
    """``base`` with the keyword arguments that were given, validated like settings."""
    overrides = {key: value for key, value in given.items() if value is not FROM_SETTINGS}
    if not overrides:
        return base
    try:
        return TelemetrySettings.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        problems: list[tuple[str, str, object]] = [
            (
                ".".join(str(part) for part in error["loc"]),
                str(error["msg"]).removeprefix("Value error, "),
                error.get("input"),
            )
            for error in exc.errors()
        ]
        lines = "; ".join(f"{path}: {message} (got {value!r})" for path, message, value in problems)
        raise SettingsError(f"invalid ResilienceMiddleware option: {lines}", problems) from None


def _header_key(name: str | None) -> bytes | None:
    return None if name is None else name.lower().encode("latin-1")


def _echoing(send: Send, name: bytes | None, request_id: str) -> Send:
    """``send`` that adds the request-id header to the response, unless already there."""
    assert name is not None  # echoing is on only with a header name
    value = request_id.encode("ascii")  # clean_request_id admits printable ASCII only

    async def send_with_request_id(message: Message) -> None:
        if message["type"] in ("http.response.start", "websocket.accept"):
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            if all(k.lower() != name for k, _ in headers):
                # A new message: the application may still hold (and reuse) its own.
                message = {**message, "headers": [*headers, (name, value)]}
        await send(message)

    return send_with_request_id


class HealthEndpoint:
    """A readiness probe: ``client.health()`` as JSON, 200 or 503 by the critical dependencies.

    ``GET`` (or ``HEAD``) answers::

        {"status": "pass" | "fail", "unusable_critical": [names...],
         "dependencies": client.health()}

    with 200 while every critical dependency is usable (its breaker is not open)
    and 503 otherwise; other methods get 405. Critical are the dependencies
    with ``critical = true`` in the client's settings, and the named
    dependencies listed in ``critical``.

    Mount it where the probe looks, for example in Starlette
    ``Route("/health/ready", HealthEndpoint(client))``.
    """

    def __init__(self, client: AsyncClient, *, critical: Iterable[str] | None = None) -> None:
        if isinstance(critical, str):
            # A bare string would be read as a list of one-letter names.
            raise TypeError(
                f"critical must be a list of dependency names, not the string {critical!r}"
            )
        named = client.resilience_settings.dependencies
        extra = frozenset(critical or ())
        unknown = sorted(extra - named.keys())
        if unknown:
            known = ", ".join(repr(name) for name in sorted(named)) or "none"
            listed = ", ".join(repr(name) for name in unknown)
            raise ValueError(
                f"HealthEndpoint(critical=...): {listed}: not a named dependency of this "
                f"client (its named dependencies: {known}); only a dependency with a section "
                "of its own under [dependencies] can be critical"
            )
        self.client = client
        self.critical = frozenset(
            {name for name, dependency in named.items() if dependency.critical} | extra
        )

    def report(self) -> dict[str, Any]:
        """The answer's body: the verdict and every dependency's health."""
        dependencies = self.client.health()
        # A critical dependency the client has no state for has shown nothing wrong:
        # failing readiness takes this instance out of service, so only on evidence.
        unusable = sorted(
            name
            for name in self.critical
            if name in dependencies and not dependencies[name].get("usable", True)
        )
        return {
            "status": "fail" if unusable else "pass",
            "unusable_critical": unusable,
            "dependencies": dependencies,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)  # when served on its own
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1003})  # no WebSocket here
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b"", [(b"allow", b"GET, HEAD")])
            return
        report = self.report()
        body = json.dumps(report).encode()
        await _respond(
            send,
            200 if report["status"] == "pass" else 503,
            b"" if method == "HEAD" else body,
            [
                (b"content-type", b"application/json"),
                # A probe must see the state now, never a cached verdict.
                (b"cache-control", b"no-store"),
            ],
            # HEAD announces the length GET would send.
            content_length=len(body),
        )


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    content_length: int | None = None,
) -> None:
    length = len(body) if content_length is None else content_length
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(length).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    # Nothing to start or stop; just acknowledge. The server drives this loop and
    # ends it (shutdown, or cancelling the task when it stops).
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
