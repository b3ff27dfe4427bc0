"""Which dependency a URL belongs to, and the bounded table of per-host state.

Named dependencies (settings ``dependencies``) match by host pattern, most
specific first: ``host:port``, then ``host``, then the longest ``*.suffix``.
Every other host gets the ``default`` policy with state of its own, keyed by
``host:port``. Those are kept in a least-recently-used table of at most
``max_tracked_hosts`` entries, so a service that calls 100,000 distinct hosts
holds state for the busiest few only. A dropped host's pipeline closes its
pools once its last call in flight has finished; a later call to that host
starts with fresh state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import httpx

from ._hosts import host_key, host_name
from ._pipeline import DependencyPipeline
from ._pools import BackgroundCloser
from ._settings import DependencyPolicy, ResilienceSettings

__all__ = ["DependencyRegistry"]

PipelineBuilder = Callable[[str, DependencyPolicy, bool], DependencyPipeline]


class DependencyRegistry:
    """Resolves URLs to dependency pipelines; owns every pipeline it made."""

    def __init__(self, settings: ResilienceSettings, build: PipelineBuilder) -> None:
        self._settings = settings
        self._build = build
        self._named = {
            name: build(name, settings.policy_for(name), True) for name in settings.dependencies
        }
        self._exact: dict[str, str] = {}
        wildcards: list[tuple[str, int | None, str]] = []
        for name, dependency in settings.dependencies.items():
            for pattern in dependency.hosts:
                if pattern.startswith("*."):
                    suffix, _, port = pattern[1:].partition(":")
                    wildcards.append((suffix, int(port) if port else None, name))
                else:
                    self._exact[pattern] = name
        # Longest suffix first, and a suffix with a port before the same one without.
        wildcards.sort(key=lambda item: (-len(item[0]), item[1] is None))
        self._wildcards = wildcards
        # (host, port) -> pipeline, most recently used last: default-policy hosts
        # live only here. Hosts of named dependencies are remembered apart, so
        # they never push a default-policy host's state out.
        self._recent: OrderedDict[tuple[str, int | None], DependencyPipeline] = OrderedDict()
        self._named_hosts: OrderedDict[tuple[str, int | None], DependencyPipeline] = OrderedDict()
        self._retiring: set[DependencyPipeline] = set()
        self._closing = BackgroundCloser()

    def resolve(self, url: httpx.URL) -> DependencyPipeline:
        key = host_key(url)
        pipeline = self._recent.get(key) or self._named_hosts.get(key)
        if pipeline is not None:
            (self._named_hosts if pipeline.named else self._recent).move_to_end(key)
            return pipeline
        limit = self._settings.max_tracked_hosts
        pipeline = self._match_named(*key)
        if pipeline is not None:
            self._named_hosts[key] = pipeline
            if len(self._named_hosts) > limit:
                self._named_hosts.popitem(last=False)  # only a lookup is forgotten
            return pipeline
        pipeline = self._build(host_name(key), self._settings.default, False)
        self._recent[key] = pipeline
        if len(self._recent) > limit:
            _, evicted = self._recent.popitem(last=False)
            self._retiring.add(evicted)
            evicted.retire(self._close_retired)
        return pipeline

    def _match_named(self, host: str, port: int | None) -> DependencyPipeline | None:
        name = self._exact.get(f"{host}:{port}") or self._exact.get(host)
        if name is None:
            for suffix, wildcard_port, candidate in self._wildcards:
                if host.endswith(suffix) and wildcard_port in (None, port):
                    name = candidate
                    break
        return None if name is None else self._named[name]

    def _close_retired(self, pipeline: DependencyPipeline) -> None:
        # With no loop running now, it stays retiring and the client's aclose() closes it.
        if not pipeline.has_pools or self._closing.start(pipeline.aclose):
            self._retiring.discard(pipeline)

    def pipelines(self) -> list[DependencyPipeline]:
        """Every dependency with state now: the named ones, then tracked hosts.

        A list built in one step per table: a metrics reader calls this from its
        own thread while the loop's thread may add or drop hosts, and iterating
        the tables lazily could see one change size.
        """
        return [*self._named.values(), *self._recent.values()]

    async def aclose(self) -> None:
        """Close every pool every pipeline built, including dropped hosts' ones."""
        owned = [*self._named.values(), *self._recent.values(), *self._retiring]
        self._recent.clear()
        self._named_hosts.clear()
        self._retiring.clear()
        for pipeline in owned:
            await pipeline.aclose()
        await self._closing.wait()
