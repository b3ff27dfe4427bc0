"""Fault profiles: how one port of the upstream behaves, request by request and over time.

A :class:`Profile` is configured on the server side, so the same request path
plays a host with a character of its own: a latency distribution with a tail,
a share of errors, hangs, slow drips and connection resets, a request rate
above which it answers 429 with ``Retry-After``, outages that start and end at
given times, and a gradual degradation. Times are seconds since the port's
clock started (the server's start, or the last ``/__start`` control request).

For each request, :meth:`ProfileState.decide` returns one :class:`Action`, in
this order of precedence::

    an outage in progress           every request fails the outage's way
    the throttle's bucket is empty  429 with Retry-After, at once
    one draw in [0, 1)              reset | hang | error | drip | ok, by the ratios
                                    (degradation raises the error ratio over time)

Every request draws the same random numbers whatever it becomes, from a
generator seeded per port, so a run with the same seed and the same order of
requests gets the same answers, and runs with different clients have the same
shape. Deciding costs a few microseconds: it must never limit the client
being measured.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, TypeVar

__all__ = [
    "OUTCOMES",
    "Action",
    "Degradation",
    "Latency",
    "Outage",
    "Profile",
    "ProfileError",
    "ProfileState",
    "Throttle",
    "profiles_from_json",
    "profiles_to_json",
]

ActionKind = Literal["ok", "error", "reset", "hang", "drip", "throttled", "outage"]
# What the server counts each request as, in its per-port tallies and timelines.
OUTCOMES: tuple[ActionKind, ...] = ("ok", "error", "reset", "hang", "drip", "throttled", "outage")
OutageKind = Literal["status", "reset", "hang"]
_OUTAGE_KINDS = ("status", "reset", "hang")


class ProfileError(ValueError):
    """A profile that cannot be served as written (the message says which field and why)."""


def _ratio(owner: str, name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ProfileError(f"{owner}.{name} must be within [0, 1], got {value}")


def _non_negative(owner: str, name: str, value: float) -> None:
    # "not value >= 0" also rejects nan.
    if not value >= 0 or math.isinf(value):
        raise ProfileError(f"{owner}.{name} must be a finite number >= 0, got {value}")


def _span(owner: str, start: float, end: float) -> None:
    _non_negative(owner, "start", start)
    _non_negative(owner, "end", end)
    if end <= start:
        raise ProfileError(f"{owner}.end ({end}) must be after its start ({start})")


@dataclass(frozen=True, slots=True)
class Latency:
    """Seconds before an answer: lognormal around ``median``, plus a fixed tail for a share.

    ``sigma`` 0 makes every request take the median; about 0.5 gives a p99 of
    3.2 times the median. ``tail`` seconds are added to a ``tail_ratio`` share
    of requests, drawn independently: the rare very slow request that a
    lognormal alone does not produce.
    """

    median: float = 0.0
    sigma: float = 0.0
    tail_ratio: float = 0.0
    tail: float = 0.0

    def __post_init__(self) -> None:
        _non_negative("latency", "median", self.median)
        _non_negative("latency", "sigma", self.sigma)
        _ratio("latency", "tail_ratio", self.tail_ratio)
        _non_negative("latency", "tail", self.tail)

    def sample(self, rng: random.Random) -> float:
        # Both draws happen on every request, so the generator's sequence never
        # depends on which branch an earlier request took.
        spread = rng.gauss(0.0, 1.0)
        tail_draw = rng.random()
        seconds = self.median * math.exp(self.sigma * spread) if self.median else 0.0
        if tail_draw < self.tail_ratio:
            seconds += self.tail
        return seconds


@dataclass(frozen=True, slots=True)
class Outage:
    """From ``start`` to ``end``: every request answers ``status``, or is reset, or hangs."""

    start: float
    end: float
    kind: OutageKind = "status"
    status: int = 503

    def __post_init__(self) -> None:
        _span("outage", self.start, self.end)
        if self.kind not in _OUTAGE_KINDS:
            raise ProfileError(f"outage.kind must be one of {_OUTAGE_KINDS}, got {self.kind!r}")
        if not 100 <= self.status <= 599:
            raise ProfileError(f"outage.status must be an HTTP status, got {self.status}")


@dataclass(frozen=True, slots=True)
class Degradation:
    """A host getting worse: from ``start`` to ``end`` latency grows linearly to
    ``latency_factor`` times its distribution and the error ratio grows by up
    to ``error_ratio``; both stay there after ``end``."""

    start: float
    end: float
    latency_factor: float = 1.0
    error_ratio: float = 0.0

    def __post_init__(self) -> None:
        _span("degradation", self.start, self.end)
        if not self.latency_factor >= 1 or math.isinf(self.latency_factor):
            raise ProfileError(
                f"degradation.latency_factor must be a finite number >= 1, "
                f"got {self.latency_factor}"
            )
        _ratio("degradation", "error_ratio", self.error_ratio)

    def progress(self, elapsed: float) -> float:
        if elapsed <= self.start:
            return 0.0
        if elapsed >= self.end:
            return 1.0
        return (elapsed - self.start) / (self.end - self.start)


@dataclass(frozen=True, slots=True)
class Throttle:
    """A token bucket: ``rate`` requests a second (``burst`` at once); beyond it, 429.

    The 429 carries ``Retry-After: <retry_after>`` (whole seconds, as most
    servers send it) and is answered at once, as a server's rate limiter does.
    """

    rate: float
    retry_after: int = 1
    burst: float | None = None

    def __post_init__(self) -> None:
        if not self.rate > 0 or math.isinf(self.rate):
            raise ProfileError(f"throttle.rate must be a finite number > 0, got {self.rate}")
        if self.retry_after < 0:
            raise ProfileError(f"throttle.retry_after must be >= 0, got {self.retry_after}")
        if self.burst is not None and not self.burst >= 1:
            raise ProfileError(f"throttle.burst must be >= 1, got {self.burst}")

    @property
    def capacity(self) -> float:
        return self.rate if self.burst is None else self.burst


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything one port does. Ratios are shares of the requests outside outages and throttling.

    A hang reads the request and never answers; the connection is closed when
    the client gives up or after ``hang_for`` seconds, so hung handlers never
    pile up in the server. A drip sends the headers, then ``drip_bytes`` body
    bytes one every ``drip_interval`` seconds.
    """

    name: str = "host"
    latency: Latency = field(default_factory=Latency)
    error_ratio: float = 0.0
    error_status: int = 503
    reset_ratio: float = 0.0
    hang_ratio: float = 0.0
    hang_for: float = 30.0
    drip_ratio: float = 0.0
    drip_interval: float = 0.5
    drip_bytes: int = 10
    body_size: int = 2
    throttle: Throttle | None = None
    outages: tuple[Outage, ...] = ()
    degradation: Degradation | None = None

    def __post_init__(self) -> None:
        owner = f"profile {self.name!r}"
        shares = ("error_ratio", "reset_ratio", "hang_ratio", "drip_ratio")
        for name in shares:
            _ratio(owner, name, getattr(self, name))
        total = sum(getattr(self, name) for name in shares)
        if self.degradation is not None:
            total += self.degradation.error_ratio
        if total > 1 + 1e-9:
            raise ProfileError(
                f"{owner}: error, reset, hang and drip ratios (with any degradation's "
                f"error ratio) add up to {total:g}, more than 1"
            )
        if not 100 <= self.error_status <= 599:
            raise ProfileError(f"{owner}.error_status must be an HTTP status")
        if not 0 < self.hang_for <= 3600:
            raise ProfileError(f"{owner}.hang_for must be more than 0 and at most 3600 s")
        _non_negative(owner, "drip_interval", self.drip_interval)
        if not 0 <= self.body_size <= 10_000_000 or not 0 <= self.drip_bytes <= 100_000:
            raise ProfileError(f"{owner}: body_size or drip_bytes out of range")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outages"] = [asdict(outage) for outage in self.outages]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """Build a profile from its JSON shape; unknown keys are errors, not silently ignored."""
        values = dict(_known(cls, data, "profile"))
        if "latency" in values:
            values["latency"] = _build(Latency, values["latency"], "latency")
        if values.get("throttle") is not None:
            values["throttle"] = _build(Throttle, values["throttle"], "throttle")
        if values.get("degradation") is not None:
            values["degradation"] = _build(Degradation, values["degradation"], "degradation")
        if "outages" in values:
            values["outages"] = tuple(_build(Outage, item, "outage") for item in values["outages"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ProfileError(f"profile: {exc}") from None


_D = TypeVar("_D")


def _known(cls: type[Any], data: object, owner: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ProfileError(f"{owner} must be an object, got {type(data).__name__}")
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ProfileError(f"{owner}: unknown field(s) {sorted(unknown)}")
    return data


def _build(cls: type[_D], data: object, owner: str) -> _D:
    try:
        return cls(**_known(cls, data, owner))
    except TypeError as exc:
        raise ProfileError(f"{owner}: {exc}") from None


def profiles_to_json(profiles: Sequence[Profile | None]) -> str:
    """One JSON line for the command line: a list with one entry (or null) per port."""
    return json.dumps([None if p is None else p.to_dict() for p in profiles])


def profiles_from_json(text: str) -> list[Profile | None]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ProfileError(f"profiles are not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise ProfileError("profiles must be a JSON list, one entry (or null) per port")
    return [None if item is None else Profile.from_dict(item) for item in data]


@dataclass(frozen=True, slots=True)
class Action:
    """What to do with one request; ``kind`` is also what the server counts it as."""

    kind: ActionKind
    delay: float = 0.0
    status: int = 200
    retry_after: int | None = None
    # Set for the requests an outage answers (its way: status, reset or hang).
    in_outage: bool = False

    @property
    def counted_as(self) -> ActionKind:
        return "outage" if self.in_outage else self.kind


_RESET = Action("reset")


class ProfileState:
    """One port's profile with its clock, random generator and throttle bucket.

    ``restart`` puts all three back to where they were at the start, so each
    client measured in turn meets the same host from its beginning.
    """

    def __init__(self, profile: Profile, seed: int, now: float) -> None:
        self.profile = profile
        self._seed = seed
        self.restart(now)

    def restart(self, now: float) -> None:
        self.epoch = now
        self._rng = random.Random(self._seed)
        self._tokens = self.profile.throttle.capacity if self.profile.throttle else 0.0
        self._refilled = now

    def elapsed(self, now: float) -> float:
        return now - self.epoch

    def decide(self, now: float) -> Action:
        profile = self.profile
        elapsed = now - self.epoch
        for outage in profile.outages:
            if outage.start <= elapsed < outage.end:
                if outage.kind == "reset":
                    return Action("reset", in_outage=True)
                if outage.kind == "hang":
                    return Action("hang", delay=profile.hang_for, in_outage=True)
                return Action("error", status=outage.status, in_outage=True)
        throttle = profile.throttle
        if throttle is not None:
            self._tokens = min(
                throttle.capacity, self._tokens + (now - self._refilled) * throttle.rate
            )
            self._refilled = now
            if self._tokens < 1:
                return Action("throttled", status=429, retry_after=throttle.retry_after)
            self._tokens -= 1

        delay = profile.latency.sample(self._rng)
        draw = self._rng.random()
        error_ratio = profile.error_ratio
        degradation = profile.degradation
        if degradation is not None:
            progress = degradation.progress(elapsed)
            delay *= 1 + progress * (degradation.latency_factor - 1)
            error_ratio += progress * degradation.error_ratio

        if draw < profile.reset_ratio:
            return _RESET
        draw -= profile.reset_ratio
        if draw < profile.hang_ratio:
            return Action("hang", delay=profile.hang_for)
        draw -= profile.hang_ratio
        if draw < error_ratio:
            return Action("error", delay=delay, status=profile.error_status)
        draw -= error_ratio
        if draw < profile.drip_ratio:
            return Action("drip", delay=delay)
        return Action("ok", delay=delay)
