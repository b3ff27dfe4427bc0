"""Settings errors that say where: each bad value's dotted path, and the variable it came from.

pydantic reports a validation error by its location in the model; this module
turns those into one :class:`SettingsError` listing every problem as the user
wrote it (``dependencies.api.routes."POST /a.json".timeout``), with
``[from RESILIENT_CLIENT_...]`` when the value came from the environment, so a
bad setting is found without reading the model's code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource
from pydantic_settings import SettingsError as PydanticSettingsError

from ._exceptions import SettingsError

__all__ = ["ENV_NESTED_DELIMITER", "ENV_PREFIX", "environment_of", "validated"]

ENV_PREFIX = "RESILIENT_CLIENT_"
ENV_NESTED_DELIMITER = "__"

_S = TypeVar("_S", bound=BaseSettings)


def environment_of(cls: type[BaseSettings]) -> dict[str, Any]:
    """What the environment says for ``cls``, parsed (SettingsError if it cannot be)."""
    try:
        return dict(EnvSettingsSource(cls)())
    except PydanticSettingsError as exc:
        raise _unparsable_environment(exc) from None


def _unparsable_environment(exc: Exception) -> SettingsError:
    return SettingsError(
        f"invalid resilience setting in the environment: {exc} "
        "(list and dict values are written as JSON, e.g. '[\"a.internal\"]')",
        [],
    )


def validated(
    cls: type[_S], data: dict[str, Any], source: str, *, given: Mapping[str, Any] | None = None
) -> _S:
    """Validate ``data``; ``given`` is what the source itself said (default: ``data``)."""
    try:
        return cls(**data)
    except PydanticSettingsError as exc:
        # The environment could not even be parsed (a list or dict that is not JSON).
        raise _unparsable_environment(exc) from None
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors()]
        environment = environment_of(cls)
        lines = "\n".join(
            f"  {path}: {message} (got {value!r})"
            f"{_origin(path, data if given is None else given, environment)}"
            for path, message, value in problems
        )
        plural = "s" if len(problems) != 1 else ""
        raise SettingsError(
            f"invalid resilience setting{plural} in {source}:\n{lines}", problems
        ) from None


# A part of a dotted path: a bare key, or a quoted one as TOML writes it ("POST /a.json").
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+|\[key\]")
_PATH_PART = re.compile(r'"(?:[^"\\]|\\.)*"|[^.]+')


def _path_parts(path: str) -> list[str]:
    return [json.loads(p) if p.startswith('"') else p for p in _PATH_PART.findall(path)]


def _origin(path: str, given: Mapping[str, Any], environment: Mapping[str, Any]) -> str:
    """`` [from RESILIENT_CLIENT_...]`` when the bad value came from the environment."""
    parts = _path_parts(path)
    if _holds(given, parts) or not _holds(environment, parts):
        return ""
    keys = [part for part in parts if not part.isdigit()]
    # A routes table is given as one JSON variable: name that variable.
    at = 1 if keys[0] == "default" else 2
    if keys[at : at + 1] == ["routes"]:
        keys = keys[: at + 1]
    return f" [from {ENV_PREFIX}{ENV_NESTED_DELIMITER.join(keys).upper()}]"


def _holds(data: Mapping[str, Any], parts: list[str]) -> bool:
    """Whether ``data`` has a value at the dotted path (list items count as inside)."""
    node: Any = data
    for part in parts:
        if isinstance(node, list):
            return True
        if not isinstance(node, Mapping):
            return False
        matches = [key for key in node if str(key).lower() == part.lower()]
        if not matches:
            return False
        node = node[matches[0]]
    return True


def _problem(error: Any) -> tuple[str, str, object]:
    location = [str(part) for part in error["loc"]]
    # pydantic names the union branch ("function-after[...]", "RateLimitPolicy") in the path.
    location = [part for part in location if not part.startswith(("function-", "function_"))]
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown setting"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    # Keys other than names (route keys: "POST /a.json") are quoted, as in TOML.
    location = [part if _BARE_KEY.fullmatch(part) else json.dumps(part) for part in location]
    return ".".join(location) or "(top level)", message, error.get("input")
