"""Deadline scopes: how much time the current logical call has left.

A deadline is an absolute point on the monotonic clock kept in a context
variable, so it follows the code that runs inside a scope across ``await``
and into tasks created there (asyncio copies the context). Scopes nest, and an
inner scope can only shrink the time left: a callee can never grant itself more
time than its caller has.

The client reads the deadline at every step of a call (bulkhead queueing, each
attempt, waits, body reads) and raises :class:`DeadlineExceededError` when it is
spent. Code that is not a call through the client is not interrupted: use
``asyncio.timeout`` for that.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = [
    "Deadline",
    "current_deadline",
    "deadline",
    "deadline_at",
    "deadline_in_force",
    "monotonic",
    "pop_deadline",
    "push_deadline",
    "running_loop",
]

# One clock for every deadline computation; a module attribute so tests can see it.
monotonic = time.monotonic

_current: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "resilient_client_deadline", default=None
)


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute deadline on the monotonic clock (``time.monotonic()`` seconds)."""

    at: float

    def time_left(self) -> float:
        """Seconds left until the deadline; never negative."""
        return max(0.0, self.at - monotonic())

    @property
    def expired(self) -> bool:
        return monotonic() >= self.at


def running_loop() -> asyncio.AbstractEventLoop:
    """The running asyncio loop, or a clear error where there is none (trio, say)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "resilient_client.AsyncClient runs on asyncio only (trio is not supported)"
        ) from None


def current_deadline() -> float | None:
    """The absolute deadline in force here, or None when no scope bounds this code."""
    return _current.get()


def _validated(seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"deadline seconds must be a number, got {seconds!r}")
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"deadline seconds must be >= 0, got {seconds!r}")
    return float(seconds)


def push_deadline(at: float | None) -> contextvars.Token[float | None]:
    """Bound what follows by ``at`` too (None: no new bound); undo with :func:`pop_deadline`.

    The effective deadline is the earlier of ``at`` and the one already in force.
    The client's hot path uses this pair instead of a context manager (cheaper).
    """
    outer = _current.get()
    if at is not None and (outer is None or at < outer):
        return _current.set(at)
    return _current.set(outer)


# Undo a push_deadline(); the context variable's own method, not a wrapper
# around it: the client calls it on every request.
pop_deadline: Callable[[contextvars.Token[float | None]], None] = _current.reset
# current_deadline() without the Python call, for the hot path.
deadline_in_force: Callable[[], float | None] = _current.get


@contextmanager
def deadline_at(at: float | None) -> Iterator[Deadline | None]:
    """Bound the code inside by an absolute monotonic deadline (None: no new bound)."""
    token = push_deadline(at)
    try:
        effective = _current.get()
        yield None if effective is None else Deadline(effective)
    finally:
        pop_deadline(token)


@contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Bound every call made through a resilient client inside this block.

    ``with deadline(0.5):`` gives the calls inside at most 0.5 s from now,
    retries, waits and body reads included; nested scopes can only shrink it.
    Yields a :class:`Deadline` whose ``time_left()`` code inside can consult.
    """
    at = monotonic() + _validated(seconds)
    with deadline_at(at) as effective:
        assert effective is not None  # a bound was given, so one is in force
        yield effective
