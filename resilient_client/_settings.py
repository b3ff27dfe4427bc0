"""Resilience settings: one policy per dependency, from a dict, a TOML file or the environment.

Shape (every section optional; what a dependency leaves out it takes from ``default``)::

    [default.timeout]        total, attempt, connect
    [default.retry]          attempts, backoff_base, backoff_max, retry_on_status,
                             respect_retry_after, budget_ratio, budget_min_per_second
    [default.breaker]        failure_ratio, minimum_calls, window, consecutive_failures,
                             open_for, open_for_max, open_for_growth, open_for_jitter,
                             half_open_probes, slow_call_duration, slow_call_ratio
    [default.bulkhead]       max_concurrent, max_queue, queue_timeout
    [default.rate_limit]     rate, period          (absent or null: no rate limit)
    [default.pool]           max_connections, max_keepalive
    [telemetry]              deadline_header, request_id_header, redact_query,
                             traces, metrics, max_incoming_deadline

    [dependencies.payments]  hosts = ["payments.internal", "*.pay.internal:8443"]
                             critical = true   (the readiness endpoint needs it)
    [dependencies.payments.timeout]
    total = 2.0
    [dependencies.payments.routes."POST /charge/*"]   (timeout and retry per route;
    retry = { attempts = 1 }                           the first matching key wins)

Precedence, highest first: values given in code (a dict or keyword arguments),
environment variables (``RESILIENT_CLIENT_DEFAULT__TIMEOUT__TOTAL=2``), the TOML
file, the library defaults. docs/configuration.md explains every default.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._exceptions import SettingsError
from ._routes import RouteTable, parse_route_key
from ._settings_errors import ENV_NESTED_DELIMITER, ENV_PREFIX, environment_of, validated

__all__ = [
    "BreakerPolicy",
    "BulkheadPolicy",
    "DependencyPolicy",
    "DependencySettings",
    "HostPattern",
    "PoolPolicy",
    "RateLimitPolicy",
    "ResilienceSettings",
    "RetryPolicy",
    "RoutePolicy",
    "TelemetrySettings",
    "TimeoutPolicy",
    "load_settings",
]

_M = TypeVar("_M", bound=BaseModel)


class _Section(BaseModel):
    # Frozen: a policy is shared by every call of a dependency and must not change under it.
    model_config = ConfigDict(extra="forbid", frozen=True)


Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class TimeoutPolicy(_Section):
    """Time limits. ``total`` bounds the whole logical call; the others each attempt."""

    total: Seconds | None = 10.0
    attempt: Seconds | None = 5.0
    connect: Seconds | None = 2.0


class RetryPolicy(_Section):
    """When and how often a failed attempt is tried again (implemented with the breaker)."""

    attempts: int = Field(3, ge=1, le=10)
    backoff_base: float = Field(0.05, ge=0, allow_inf_nan=False)
    backoff_max: float = Field(2.0, ge=0, allow_inf_nan=False)
    retry_on_status: frozenset[Annotated[int, Field(ge=100, le=599)]] = frozenset(
        {429, 502, 503, 504}
    )
    respect_retry_after: bool = True
    budget_ratio: float = Field(0.2, ge=0, le=10, allow_inf_nan=False)
    budget_min_per_second: float = Field(3.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _backoff_ordered(self) -> Self:
        if self.backoff_max < self.backoff_base:
            raise ValueError(
                f"backoff_max ({self.backoff_max}) must be >= backoff_base ({self.backoff_base})"
            )
        return self


class BreakerPolicy(_Section):
    """When the circuit opens, how long it stays open, how it probes for recovery.

    Each open period lasts ``open_for_growth`` times how long the dependency has been
    failing (since the circuit first opened, with no closing success since), at least
    ``open_for`` and at most ``open_for_max``, give or take ``open_for_jitter``.
    ``slow_call_duration`` (None: off) counts successes slower than it; the circuit
    opens when slow calls / outcomes in the window reach ``slow_call_ratio``.
    """

    failure_ratio: float = Field(0.5, gt=0, le=1, allow_inf_nan=False)
    minimum_calls: int = Field(20, ge=1)
    window: Seconds = 10.0
    consecutive_failures: int | None = Field(10, ge=1)
    open_for: Seconds = 0.5
    open_for_max: Seconds = 30.0
    open_for_growth: float = Field(0.15, ge=0, le=10, allow_inf_nan=False)
    open_for_jitter: float = Field(0.1, ge=0, lt=1, allow_inf_nan=False)
    half_open_probes: int = Field(1, ge=1)
    slow_call_duration: Seconds | None = None
    slow_call_ratio: float = Field(0.8, gt=0, le=1, allow_inf_nan=False)

    @model_validator(mode="after")
    def _open_for_ordered(self) -> Self:
        if self.open_for > self.open_for_max:
            raise ValueError(
                f"open_for ({self.open_for}) must be <= open_for_max ({self.open_for_max}): "
                "open_for is the first and shortest open period, open_for_max the longest"
            )
        return self


class BulkheadPolicy(_Section):
    """Bounded concurrency per dependency, with a bounded, time-limited queue."""

    max_concurrent: int = Field(50, ge=1)
    # A call waits for a permit as long as bare httpx waits for a connection (its
    # pool timeout, 5 s): failing sooner lost calls bare httpx completes (measured:
    # with a 0.25 s queue of 50, 200 callers of one healthy host had 15,078 calls
    # fail with BulkheadFullError in 4 s; benchmarks/results/2026-12-08-bench.md).
    max_queue: int = Field(500, ge=0)
    queue_timeout: Seconds = 5.0


class RateLimitPolicy(_Section):
    """At most ``rate`` attempts per ``period`` seconds (implemented with the breaker)."""

    rate: float = Field(gt=0, allow_inf_nan=False)
    period: Seconds = 1.0


class PoolPolicy(_Section):
    """The dependency's own connection pool.

    None means derived: the client's ``limits=`` when one was given, else
    ``max_connections`` twice the bulkhead's ``max_concurrent`` (a permitted call
    never waits for a connection, even while cancelled calls' connections are
    still closing) and ``max_keepalive`` equal to ``max_concurrent``.
    """

    max_connections: int | None = Field(None, ge=1)
    max_keepalive: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _keepalive_within_connections(self) -> Self:
        if (
            self.max_connections is not None
            and self.max_keepalive is not None
            and self.max_keepalive > self.max_connections
        ):
            raise ValueError(
                f"max_keepalive ({self.max_keepalive}) must be <= "
                f"max_connections ({self.max_connections})"
            )
        return self


_PER_DEPENDENCY = ("breaker", "bulkhead", "rate_limit", "pool")
_PER_DEPENDENCY_RETRY = ("budget_ratio", "budget_min_per_second")


class RoutePolicy(_Section):
    """What one route of a dependency sets apart from the dependency: timeout and retry.

    As given, only the fields set count (``model_fields_set``, in each section too);
    ``DependencyPolicy.resolved_routes`` holds them merged over the dependency's.
    """

    timeout: TimeoutPolicy = TimeoutPolicy()
    retry: RetryPolicy = RetryPolicy()

    @model_validator(mode="before")
    @classmethod
    def _only_per_call_sections(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            refused = [name for name in _PER_DEPENDENCY if name in data]
            if refused:
                raise ValueError(
                    f"{', '.join(refused)} cannot be set per route: breaker, bulkhead, "
                    "rate_limit and pool judge or protect the dependency as a whole; "
                    "a route sets only timeout and retry"
                )
            retry = data.get("retry")
            given: Any = retry.model_fields_set if isinstance(retry, RetryPolicy) else retry
            if not isinstance(given, Mapping | set):
                given = ()
            refused = [f"retry.{name}" for name in _PER_DEPENDENCY_RETRY if name in given]
            if refused:
                raise ValueError(
                    f"{', '.join(refused)} cannot be set per route: the retry budget "
                    "bounds the retries of the dependency as a whole"
                )
        return data


def _check_route_key(key: str) -> str:
    parse_route_key(key)
    return key


RoutePattern = Annotated[str, AfterValidator(_check_route_key)]


class DependencyPolicy(_Section):
    """Everything that governs calls to one dependency."""

    timeout: TimeoutPolicy = TimeoutPolicy()
    retry: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    bulkhead: BulkheadPolicy = BulkheadPolicy()
    rate_limit: RateLimitPolicy | None = None
    pool: PoolPolicy = PoolPolicy()
    # "METHOD /path-glob" or "/path-glob" -> what the route sets apart, in order
    # (the first match wins). A dependency's own table replaces default's whole.
    routes: dict[RoutePattern, RoutePolicy] = {}

    @field_validator("routes")
    @classmethod
    def _routes_distinct(cls, routes: dict[str, RoutePolicy]) -> dict[str, RoutePolicy]:
        RouteTable(routes.items())  # two keys for one route ('post /a', 'POST /a')
        return routes

    def over(self, base: DependencyPolicy) -> DependencyPolicy:
        """This policy with every setting it does not set itself taken from ``base``."""
        return _overlay(self, base)

    @cached_property
    def resolved_routes(self) -> tuple[tuple[str, RoutePolicy], ...]:
        """``routes`` in order, each with complete sections: its own over this policy's."""
        base = RoutePolicy.model_construct(timeout=self.timeout, retry=self.retry)
        return tuple((key, _overlay(route, base)) for key, route in self.routes.items())

    @cached_property
    def route_table(self) -> RouteTable[RoutePolicy]:
        """``resolved_routes`` compiled for matching (once per policy object)."""
        return RouteTable(self.resolved_routes)


def _overlay(override: _M, base: _M) -> _M:
    """Deep-merge two models of one type: the fields ``override`` set explicitly win."""
    values: dict[str, Any] = {}
    for name in type(override).model_fields:
        mine = getattr(override, name)
        theirs = getattr(base, name)
        if name not in override.model_fields_set:
            values[name] = theirs
        elif isinstance(mine, BaseModel) and isinstance(theirs, type(mine)):
            values[name] = _overlay(mine, theirs)
        else:
            values[name] = mine
    merged = type(override).model_construct(**values)
    # Keep "explicitly set" information so a further overlay still sees it.
    object.__setattr__(
        merged, "__pydantic_fields_set__", override.model_fields_set | base.model_fields_set
    )
    return merged


_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
_WILDCARD = re.compile(rf"^\*(\.{_LABEL})+$")


def _check_host_pattern(pattern: str) -> str:
    """Normalise a host pattern: ``host``, ``host:port``, ``[v6]:port`` or ``*.suffix``."""
    text = pattern.strip().lower()
    if "://" in text or "/" in text:
        raise ValueError(
            f"{pattern!r} is not a host pattern: give 'host', 'host:port' or '*.suffix', "
            "without scheme or path"
        )
    host, port = text, None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{pattern!r}: unclosed '[' in IPv6 address")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{pattern!r}: expected ':port' after ']'")
            port = rest[1:]
        if ":" not in host:
            raise ValueError(f"{pattern!r}: brackets are only for IPv6 addresses")
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text:
        raise ValueError(f"{pattern!r}: write IPv6 addresses in brackets, e.g. '[::1]:8080'")
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{pattern!r}: port must be a number from 1 to 65535")
    if ":" not in host and not (_HOSTNAME.match(host) or _WILDCARD.match(host)):
        raise ValueError(f"{pattern!r}: not a valid host name or '*.suffix' wildcard")
    host = host.rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    return host if port is None else f"{host}:{int(port)}"


HostPattern = Annotated[str, AfterValidator(_check_host_pattern)]


class DependencySettings(DependencyPolicy):
    """A named dependency: the hosts it covers and what it sets apart from ``default``."""

    hosts: list[HostPattern] = Field(min_length=1)
    # A readiness probe (rc.HealthEndpoint) answers 503 while a critical dependency
    # is unusable (its breaker open).
    critical: bool = False

    def policy(self) -> DependencyPolicy:
        """The policy part alone (without ``hosts``)."""
        data = {name: getattr(self, name) for name in DependencyPolicy.model_fields}
        return _restamp(DependencyPolicy.model_construct(**data), self.model_fields_set)


def _restamp(model: DependencyPolicy, fields_set: set[str]) -> DependencyPolicy:
    object.__setattr__(
        model, "__pydantic_fields_set__", fields_set & set(DependencyPolicy.model_fields)
    )
    return model


_DEPENDENCY_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]|_(?!_))*$")


def _check_dependency_name(name: str) -> str:
    # Environment variable names are matched case-insensitively (lower-cased), so a
    # name with capitals could never be overridden from the environment.
    if not _DEPENDENCY_NAME.match(name):
        raise ValueError(
            f"dependency name {name!r} must be lower-case letters, digits, '_' or '-', "
            "without '__' (so that RESILIENT_CLIENT_DEPENDENCIES__<NAME>__... can address it)"
        )
    return name


DependencyName = Annotated[str, AfterValidator(_check_dependency_name)]

# An HTTP field name (RFC 9110 token).
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _check_header_name(name: str) -> str:
    if not _TOKEN.match(name):
        raise ValueError(f"{name!r} is not a valid HTTP header name")
    return name


HeaderName = Annotated[str, AfterValidator(_check_header_name)]


class TelemetrySettings(_Section):
    """What every attempt carries downstream, and what telemetry may record."""

    # The time the call has left, in whole milliseconds, so the next service can
    # stop work its caller has given up on. None: not sent (nor read, by the middleware).
    deadline_header: HeaderName | None = "X-Request-Timeout-Ms"
    # The correlation id sent on every attempt and bound to log records.
    request_id_header: HeaderName | None = "X-Request-ID"
    # Query strings often carry tokens and signatures: spans record their names only.
    redact_query: bool = True
    # Our spans (a span per call, a CLIENT span per attempt) and metrics, when an
    # OpenTelemetry SDK is configured. Off: trace context is still passed on.
    traces: bool = True
    metrics: bool = True
    # The middleware's cap on a deadline a caller asks for: a caller cannot grant
    # itself unlimited time (or a typo a day) on this service.
    max_incoming_deadline: Seconds = 60.0


class ResilienceSettings(BaseSettings):
    """Resilience settings for one client: a default policy and named dependencies.

    Hosts that no dependency names get the ``default`` policy, each host with its
    own state (pool, bulkhead, breaker). ``max_tracked_hosts`` bounds how many such
    hosts keep state at once; the least recently used are dropped beyond it.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    default: DependencyPolicy = DependencyPolicy()
    dependencies: dict[DependencyName, DependencySettings] = {}
    max_tracked_hosts: int = Field(1024, ge=1)
    telemetry: TelemetrySettings = TelemetrySettings()

    @model_validator(mode="after")
    def _dependencies_consistent(self) -> Self:
        owner: dict[str, str] = {}
        for name, dependency in self.dependencies.items():
            for host in dependency.hosts:
                if host in owner and owner[host] != name:
                    raise ValueError(
                        f"host pattern {host!r} is claimed by both dependencies "
                        f"{owner[host]!r} and {name!r}"
                    )
                owner[host] = name
            # Each part may be valid alone and the combination not (backoff_max
            # from the dependency below backoff_base from default, say).
            policy = self.policy_for(name)
            _check_combined(DependencyPolicy, policy, f"dependency {name!r} combined with default")
            _check_routes(policy, f"dependency {name!r}")
        _check_routes(self.default, "default")
        return self

    def policy_for(self, name: str) -> DependencyPolicy:
        """The effective policy of a named dependency (its own settings over ``default``)."""
        return self.dependencies[name].policy().over(self.default)

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, source: str = "settings given in code"
    ) -> Self:
        """Validate a dict of the settings' shape; environment variables fill what it omits."""
        return validated(cls, dict(data), source)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Self:
        """Load a TOML file; environment variables override what the file says."""
        file = Path(path)
        try:
            with file.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise SettingsError(f"settings file {str(file)!r} does not exist", []) from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(
                f"settings file {str(file)!r} is not valid TOML: {exc}", []
            ) from None
        environment = environment_of(cls)
        return validated(
            cls, _deep_merge(data, environment), f"settings file {str(file)!r}", given=data
        )

    @classmethod
    def from_environment(cls) -> Self:
        """Defaults, overridden by ``RESILIENT_CLIENT_*`` environment variables."""
        return validated(cls, {}, "the environment")


def _check_combined(
    model: type[BaseModel], merged: BaseModel, what: str, section: str = "policy"
) -> None:
    """Validate a merged model again (merging skips validation); ValueError naming ``what``."""
    try:
        # Routes are checked on their own (_check_routes), each over its dependency.
        model.model_validate(merged.model_dump(exclude={"routes"}))
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or section}: "
            f"{str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ValueError(f"{what} is invalid: {reasons}") from None


def _check_routes(policy: DependencyPolicy, owner: str) -> None:
    """Each route merged over its dependency's timeout and retry is valid."""
    for key, route in policy.resolved_routes:
        what = f"{owner} route {key!r} combined with its dependency"
        _check_combined(TimeoutPolicy, route.timeout, what, "timeout")
        _check_combined(RetryPolicy, route.retry, what, "retry")


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    settings: ResilienceSettings | Mapping[str, Any] | str | os.PathLike[str] | None,
) -> ResilienceSettings:
    """Accept what ``AsyncClient(settings=...)`` accepts and return validated settings."""
    if settings is None:
        return ResilienceSettings.from_environment()
    if isinstance(settings, ResilienceSettings):
        return settings
    if isinstance(settings, Mapping):
        return ResilienceSettings.from_mapping(settings)
    if isinstance(settings, str | os.PathLike):
        return ResilienceSettings.from_toml(settings)
    raise TypeError(
        "settings must be a ResilienceSettings, a dict of the same shape or a path to a "
        f"TOML file, not {type(settings).__name__}"
    )
