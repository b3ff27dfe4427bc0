"""What a call carries across a hop besides trace context: its request id and its time left.

The request id is a context variable, like the deadline: bound by the ASGI
middleware for the request being handled (or by :func:`request_id` in code),
it follows everything that runs inside, across ``await`` and into tasks created
there. The client sends it on every attempt; a call made where none is bound
gets one of its own, the same on all of its attempts.

The time left travels as whole milliseconds, not as an absolute time: the two
machines' clocks need not agree, and a duration measured on one monotonic
clock and restarted on the other loses only the time in flight, which makes
the callee's deadline slightly later than the caller's, never earlier.
"""

from __future__ import annotations

import contextvars
import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

__all__ = [
    "HeaderSlot",
    "current_request_id",
    "format_time_left",
    "new_request_id",
    "parse_time_left",
    "request_id",
]

# Longer ids are cut: a header value is logged and stored on every record.
MAX_REQUEST_ID_LENGTH = 128

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "resilient_client_request_id", default=None
)


def current_request_id() -> str | None:
    """The request id bound here, or None when no scope has bound one."""
    return _current.get()


def bound_or_new_request_id() -> str:
    """The request id bound here, or a new one (as :func:`new_request_id` makes it).

    Written out rather than calling the two functions: it runs on every call.
    """
    return _current.get() or f"{random.getrandbits(128):032x}"


def new_request_id() -> str:
    """A fresh random request id (32 hex digits).

    From ``random`` rather than ``uuid4`` (a fifth of the cost, on every call):
    an id correlates, it guards nothing, so it needs to be unique, not
    unguessable. ``random`` is reseeded in a forked child, so worker processes
    forked from one parent do not repeat each other's ids.
    """
    return f"{random.getrandbits(128):032x}"


def clean_request_id(value: str) -> str | None:
    """A request id fit to forward and log (printable ASCII, bounded), or None."""
    value = value.strip()[:MAX_REQUEST_ID_LENGTH]
    if not value or not value.isascii() or not value.isprintable():
        return None  # a header value we could not send on as it came
    return value


@contextmanager
def request_id(value: str | None = None) -> Iterator[str]:
    """Bind a request id for the calls made inside (a new one if ``value`` is None).

    Calls made inside send it in the request-id header on every attempt, and
    the library's log records carry it.
    """
    bound = new_request_id() if value is None else clean_request_id(value)
    if bound is None:
        raise ValueError(f"request id {value!r} must be non-empty printable ASCII")
    token = _current.set(bound)
    try:
        yield bound
    finally:
        _current.reset(token)


def bind_request_id(value: str) -> contextvars.Token[str | None]:
    """Bind ``value`` (already cleaned) until :func:`unbind_request_id`: the hot path's pair."""
    return _current.set(value)


def unbind_request_id(token: contextvars.Token[str | None]) -> None:
    _current.reset(token)


def format_time_left(seconds: float) -> str:
    """The deadline header's value: whole milliseconds left, rounded down, at least 0.

    Rounded down so the callee never believes it has more time than the caller.
    """
    return str(math.floor(seconds * 1000)) if seconds > 0 else "0"


def parse_time_left(value: str) -> float | None:
    """Seconds from a deadline header's value, or None when it is not a count of ms."""
    value = value.strip()
    if not value.isdigit() or len(value) > 12:  # 12 digits: about 31 years, ample
        return None
    return int(value) / 1000


class HeaderSlot:
    """One header the client writes on every call or attempt, written cheaply.

    ``name in headers`` makes httpx work out the headers' encoding by decoding
    every one of them, on each call: measured alone, 5 to 6 µs per request for
    the two headers, 0.3% of a request (benchmarks/shortcuts.py, results of
    2026-12-08; a loop understates what code costs inside a request). The names here
    are ASCII by construction (settings accept RFC 9110 tokens only), and the
    values we write are ASCII, so the lookup compares bytes directly on the
    headers' list, the same list ``httpx.Headers`` keeps; if a future httpx
    keeps them otherwise, the public (slower) operations are used.
    """

    __slots__ = ("_lower", "_raw", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._raw = name.encode("ascii")
        self._lower = self._raw.lower()

    def get(self, headers: httpx.Headers) -> str | None:
        """The header's first value, or None."""
        entries = getattr(headers, "_list", None)
        if not isinstance(entries, list):
            value: str | None = headers.get(self.name)
            return value
        lower = self._lower
        for _, key, raw in entries:
            if key == lower:
                return bytes(raw).decode("latin-1")
        return None

    def set_default(self, headers: httpx.Headers, value: Callable[[], str]) -> None:
        """Set the header to ``value()`` unless the headers have it already."""
        if self.get(headers) is None:
            self.set(headers, value())

    def set(self, headers: httpx.Headers, value: str) -> None:
        """Set the header to ``value`` (ASCII), replacing any value it had."""
        entries = getattr(headers, "_list", None)
        if not isinstance(entries, list):
            headers[self.name] = value
            return
        lower = self._lower
        entry = (self._raw, lower, value.encode("ascii"))
        for index, (_, key, _) in enumerate(entries):
            if key == lower:
                entries[index] = entry
                # Any later duplicates go, as httpx's own __setitem__ removes them.
                entries[index + 1 :] = [e for e in entries[index + 1 :] if e[1] != lower]
                return
        entries.append(entry)
