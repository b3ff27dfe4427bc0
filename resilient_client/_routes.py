"""Routes within a dependency: parsing ``"METHOD /path-glob"`` keys and matching requests.

A key is ``"/path-glob"`` (every method) or ``"METHOD /path-glob"``, one space between.
The method is an HTTP token, upper-cased (httpx upper-cases every request's method).
The glob starts with ``/``; ``*`` matches any characters, ``/`` included; everything
else is literal. Globs are compared with the *decoded* path (``request.url.path``),
so ``/café`` and ``/caf%C3%A9`` mean the same, and ``%2A`` is a literal ``*``.
The query string is never part of the path, so a glob may not contain ``?`` (or ``#``).

``RouteTable`` compiles an ordered table once; ``match`` returns the value of the first
key in order that matches, or None. Each method has one precompiled alternation of its
keys and the any-method keys, in table order, so a call is one dict lookup and one
regex match.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Generic, NamedTuple, TypeVar
from urllib.parse import unquote

__all__ = ["RouteKey", "RouteTable", "parse_route_key"]

T = TypeVar("T")

# An HTTP method is a token (RFC 9110, 5.6.2 and 9.1).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORM = "give '/path-glob' or 'METHOD /path-glob', one space between"


class RouteKey(NamedTuple):
    """A parsed key: the method (None: every method) and the glob's literal parts.

    ``parts`` are the decoded text between the glob's stars (consecutive stars
    are one), so ``"/a/*.json"`` is ``("/a/", ".json")`` and ``"/a/*"`` is
    ``("/a/", "")``.
    """

    method: str | None
    parts: tuple[str, ...]


def parse_route_key(key: str) -> RouteKey:
    """Parse and check one key; ValueError says what is wrong with it."""
    if not key.strip():
        raise ValueError(f"a route key is empty: {_FORM}")
    if any(c.isspace() and c != " " for c in key):
        raise ValueError(f"route {key!r}: whitespace other than one space ({_FORM})")
    method, glob = "", key
    if not key.startswith("/"):
        method, space, glob = key.partition(" ")
        if not space or "://" in key:
            raise ValueError(
                f"route {key!r}: the path glob must start with '/' "
                "(a path within the dependency, without scheme or host)"
            )
        if method == "*":
            raise ValueError(f"route {key!r}: leave the method out to match every method")
        if not method:
            raise ValueError(f"route {key!r} is not a route: {_FORM}")
        if not _TOKEN.fullmatch(method):
            raise ValueError(f"route {key!r}: {method!r} is not an HTTP method")
    if " " in glob:
        raise ValueError(f"route {key!r}: a space in the path glob ({_FORM})")
    if not glob.startswith("/"):
        raise ValueError(f"route {key!r}: the path glob must start with '/'")
    if "?" in glob:
        raise ValueError(f"route {key!r}: the query string is not matched; remove '?...'")
    if "#" in glob:
        raise ValueError(f"route {key!r}: a fragment is never sent; remove '#...'")
    # Split before decoding, so that '%2A' stays a literal '*'.
    parts = tuple(unquote(part) for part in re.split(r"\*+", glob))
    return RouteKey(method.upper() or None, parts)


def glob_pattern(parts: tuple[str, ...]) -> str:
    """The regex source for a glob's literal parts: a star between each two."""
    return ".*".join(re.escape(part) for part in parts)


class _Alternatives(Generic[T]):
    """Ordered globs as one regex; group i + 1 is glob i, so ``lastindex`` picks the value."""

    __slots__ = ("fullmatch", "values")

    def __init__(self, entries: list[tuple[tuple[str, ...], T]]) -> None:
        pattern = "|".join(f"({glob_pattern(parts)})" for parts, _ in entries)
        # DOTALL: a decoded path may hold a newline ('%0A'), and '*' matches it too.
        self.fullmatch: Callable[[str], re.Match[str] | None] | None = (
            re.compile(pattern, re.DOTALL).fullmatch if entries else None
        )
        # Index 0 is never used: lastindex counts groups from 1.
        self.values: tuple[T | None, ...] = (None, *(value for _, value in entries))


class RouteTable(Generic[T]):
    """An ordered table of ``(key, value)`` compiled once; the first matching key wins.

    ``table.empty`` (or ``not table``, three times slower) tells that there is
    nothing to match, so a dependency without routes costs one attribute read per
    call. ``match`` takes the request's method as httpx gives it (upper-case) and
    its decoded path (``request.url.path``, without the query). ValueError for an
    invalid key or two keys that mean the same route.
    """

    __slots__ = ("_any", "_by_method", "empty", "routes")

    def __init__(self, routes: Iterable[tuple[str, T]]) -> None:
        self.routes: tuple[tuple[str, T], ...] = tuple(routes)
        self.empty = not self.routes
        parsed: list[tuple[RouteKey, T]] = []
        seen: dict[RouteKey, str] = {}
        for key, value in self.routes:
            route = parse_route_key(key)
            if route in seen:
                raise ValueError(f"routes {seen[route]!r} and {key!r} are the same route")
            seen[route] = key
            parsed.append((route, value))
        self._any = _Alternatives([(r.parts, v) for r, v in parsed if r.method is None])
        self._by_method = {
            method: _Alternatives([(r.parts, v) for r, v in parsed if r.method in (None, method)])
            for method in {r.method for r, _ in parsed if r.method is not None}
        }

    def __bool__(self) -> bool:
        return not self.empty

    def __len__(self) -> int:
        return len(self.routes)

    def __repr__(self) -> str:
        return f"RouteTable({[key for key, _ in self.routes]!r})"

    def match(self, method: str, path: str) -> T | None:
        """The value of the first key that matches ``method`` and ``path``, else None."""
        table = self._by_method.get(method, self._any)
        fullmatch = table.fullmatch
        if fullmatch is None:
            return None
        found = fullmatch(path)
        return None if found is None else table.values[found.lastindex or 0]
