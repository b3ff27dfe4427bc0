"""A small fault-injecting HTTP/1.1 upstream on 127.0.0.1, for tests, benchmarks and the bench.

Each request says how it should be answered, in its query string, so one
server can play a healthy host, a slow one and a broken one at once:

=================  ===========================================================
``delay=S``        wait S seconds before answering
``status=N``       answer with status N (default 200)
``hang=1``         read the request, never answer
``drip=S``         send the headers, then the body one byte every S seconds
``drip_head=S``    send the status line and headers one byte every S seconds
``size=N``         body of N bytes (default 2)
``reset=1``        close the connection without answering
``retry_after=V``  add a ``Retry-After: V`` header
``location=URL``   add a ``Location: URL`` header (with ``status=302``: a redirect)
``set_cookie=V``   add a ``Set-Cookie: V`` header
=================  ===========================================================

A port can instead be given a fault *profile* (:mod:`._profiles`), configured
on the server side: then every request to that port is answered as the profile
decides (latency with a tail, errors, hangs, drips, resets, 429 with
Retry-After, outages at given times, gradual degradation), whatever its query
string, so one request path plays a host with a behaviour over time.

It counts requests per port and keeps the headers of the most recent ones, so
tests and benchmarks measure load at the server. Three control paths answer on
every port and are not counted:

``GET /__stats``   the counts as JSON, for a client in another process: the
                   requests each port received since the server started, and
                   per port what it answered since its clock started, in total
                   and per time bucket (``timeline``), for load-over-time plots
``GET /__start``   restart this port's clock, counts and random generator
                   (``?all=1``: every port's), so the next client meets the
                   host from its beginning
``GET /__clock``   ``?at=T``: set this port's counting clock to read T seconds
                   now, keeping its counts and its profile's state, so that a
                   client measured in segments with gaps between them gets one
                   timeline in its own time

Only 127.0.0.1 is ever bound.

Run it in a thread of this process (:class:`UpstreamThread`) for functional
tests, or as its own process (:class:`UpstreamProcess`) wherever latency or CPU
is measured: a server thread shares the client's GIL, and every hand-over
between the two can cost a GIL switch interval (5 ms). As a process,
``python -m resilient_client.testing._upstream --ports 2`` prints one JSON line with the
ports, then serves until its stdin closes (``--profiles JSON`` instead of
``--ports``: one port per profile, or per ``null`` for a query-string port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl

from ._profiles import Profile, ProfileState, profiles_from_json, profiles_to_json
from ._wire import answer_as_profiled, read_body, status_head

__all__ = ["RecordedRequest", "Upstream", "UpstreamProcess", "UpstreamThread"]

HOST = "127.0.0.1"
# GET this path on any port for {"received": {port: count}, "ports": {...}} as JSON.
STATS_PATH = "/__stats"
# GET this path on a port to restart its clock (?all=1: every port's).
START_PATH = "/__start"
# GET this path on a port with ?at=T to set its counting clock to read T seconds now.
CLOCK_PATH = "/__clock"
# Width in seconds of one bucket of the per-port timelines in the stats.
DEFAULT_BUCKET = 0.1
_MAX_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    port: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the request was read


@dataclass
class _PortClock:
    """What one port answered since its clock started: totals and a timeline of buckets."""

    epoch: float
    outcomes: Counter[str] = field(default_factory=Counter)
    timeline: dict[int, Counter[str]] = field(default_factory=dict)

    def count(self, label: str, now: float, bucket: float) -> None:
        self.outcomes[label] += 1
        index = int((now - self.epoch) / bucket)
        slot = self.timeline.get(index)
        if slot is None:
            slot = self.timeline[index] = Counter()
        slot[label] += 1

    def as_dict(self, now: float, profile: Profile | None) -> dict[str, Any]:
        return {
            "profile": None if profile is None else profile.name,
            "since_start": round(now - self.epoch, 3),
            "outcomes": dict(self.outcomes),
            "timeline": {str(i): dict(c) for i, c in sorted(self.timeline.items())},
        }


@dataclass
class Upstream:
    """The server state: listening ports, counters and recent requests.

    ``seed`` seeds each profile port's random generator (the port's index is
    added, so two ports with one profile still differ).
    """

    ports: list[int] = field(default_factory=list)
    received: Counter[int] = field(default_factory=Counter)
    recent: deque[RecordedRequest] = field(default_factory=lambda: deque(maxlen=1000))
    open_connections: int = 0
    seed: int = 0
    bucket: float = DEFAULT_BUCKET
    _servers: list[asyncio.Server] = field(default_factory=list)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)
    _profiles: dict[int, ProfileState] = field(default_factory=dict)
    _clocks: dict[int, _PortClock] = field(default_factory=dict)

    async def start(self, count: int = 1, profiles: Sequence[Profile | None] | None = None) -> None:
        """Listen on ``count`` ports, or on one port per entry of ``profiles``.

        A ``None`` profile leaves its port to the query-string API.
        """
        chosen = list(profiles) if profiles is not None else [None] * count
        now = time.monotonic()
        for index, profile in enumerate(chosen):
            server = await asyncio.start_server(self._serve, HOST, 0, backlog=1024)
            self._servers.append(server)
            port = server.sockets[0].getsockname()[1]
            self.ports.append(port)
            self._clocks[port] = _PortClock(now)
            if profile is not None:
                self._profiles[port] = ProfileState(profile, self.seed + index, now)

    def restart_clock(self, port: int) -> None:
        """Start the port's time, counts and random draws again (``received`` keeps its total)."""
        now = time.monotonic()
        self._clocks[port] = _PortClock(now)
        state = self._profiles.get(port)
        if state is not None:
            state.restart(now)

    def set_clock(self, port: int, at: float) -> None:
        """Make the port's counting clock read ``at`` seconds now; counts and profile stay."""
        self._clocks[port].epoch = time.monotonic() - at

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "received": {str(p): n for p, n in self.received.items()},
            "bucket": self.bucket,
            "ports": {
                str(port): clock.as_dict(
                    now, None if port not in self._profiles else self._profiles[port].profile
                )
                for port, clock in self._clocks.items()
            },
        }

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        # Connections a test left hanging (hang=1, drips) must not keep the server alive.
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()

    def url(self, index: int = 0, path: str = "/") -> str:
        return f"http://{HOST}:{self.ports[index]}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("sockname")[1]
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.open_connections += 1
        try:
            while await self._one_request(port, reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # the server is stopping; end the handler quietly
        finally:
            self._handlers.discard(task)
            self.open_connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        if len(head) > _MAX_HEAD:
            return False
        request_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await read_body(reader, headers)
        keep_alive = headers.get("connection", "").lower() != "close"
        path, _, query = target.partition("?")
        if path in (STATS_PATH, START_PATH, CLOCK_PATH):
            # How a benchmark in another process reads the counts; not counted itself.
            answer = json.dumps(self._control(port, path, dict(parse_qsl(query))))
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Length: {len(answer)}\r\n"
                f"Content-Type: application/json\r\n\r\n{answer}".encode()
            )
            await writer.drain()
            return keep_alive
        now = time.monotonic()
        self.received[port] += 1
        self.recent.append(RecordedRequest(port, method, target, headers, body, now))
        state = self._profiles.get(port)
        if state is not None:
            action = state.decide(now)
            self._clocks[port].count(action.counted_as, now, self.bucket)
            return await answer_as_profiled(action, state.profile, reader, writer) and keep_alive

        options = dict(parse_qsl(query))
        self._clocks[port].count(_query_label(options), now, self.bucket)
        if options.get("reset"):
            writer.transport.abort()
            return False
        if options.get("hang"):
            await asyncio.Event().wait()  # until the connection or server goes away
        if "delay" in options:
            await asyncio.sleep(float(options["delay"]))
        status = int(options.get("status", 200))
        size = int(options.get("size", 2))
        extra = "".join(
            f"{name}: {options[key]}\r\n"
            for key, name in (
                ("retry_after", "Retry-After"),
                ("location", "Location"),
                ("set_cookie", "Set-Cookie"),
            )
            if key in options
        )
        head = status_head(status, size, extra)
        if "drip_head" in options:
            interval = float(options["drip_head"])
            for index in range(len(head)):
                writer.write(head[index : index + 1])
                await writer.drain()
                await asyncio.sleep(interval)
        else:
            writer.write(head)
        if "drip" in options:
            interval = float(options["drip"])
            for _ in range(size):
                await writer.drain()
                await asyncio.sleep(interval)
                writer.write(b"x")
        elif method != "HEAD":  # a HEAD answer has no body, whatever its Content-Length says
            writer.write(b"x" * size)
        await writer.drain()
        return keep_alive

    def _control(self, port: int, path: str, options: dict[str, str]) -> dict[str, Any]:
        """Carry out a control request; its JSON answer."""
        if path == START_PATH:
            for each in self.ports if options.get("all") == "1" else [port]:
                self.restart_clock(each)
            return {"restarted": True}
        if path == CLOCK_PATH:
            self.set_clock(port, float(options["at"]))
            return {"clock": float(options["at"])}
        return self.stats()


def _query_label(options: dict[str, str]) -> str:
    """What a query-string request is counted as, in the words of the profiles' outcomes."""
    if options.get("reset"):
        return "reset"
    if options.get("hang"):
        return "hang"
    if "drip" in options or "drip_head" in options:
        return "drip"
    status = int(options.get("status", 200))
    if status == 429:
        return "throttled"
    return "ok" if status < 400 else "error"


class UpstreamThread:
    """An :class:`Upstream` served by its own event loop in a background thread.

    The client under test then never shares its event loop with the server, as
    it would not in production.
    """

    def __init__(
        self, ports: int = 1, *, profiles: Sequence[Profile | None] | None = None, seed: int = 0
    ) -> None:
        self._count = ports
        self._profiles = profiles
        self.upstream = Upstream(seed=seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Upstream:
        self._thread.start()
        starting = self.upstream.start(self._count, self._profiles)
        asyncio.run_coroutine_threadsafe(starting, self._loop).result(5)
        return self.upstream

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.upstream.stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


class UpstreamProcess:
    """``python -m resilient_client.testing._upstream`` in a process of its own, on 127.0.0.1.

    A process rather than a thread, so that the server never competes with the
    client under test for the same interpreter lock. Use as ``async with``: it is
    stopped on the way out whatever happened inside.

    With ``profiles`` it listens on one port per profile (``None``: a
    query-string port), the profiles passed as JSON on its command line; ``ports``
    is then left out. :meth:`stats`, :meth:`restart_clock` and :meth:`set_clock` use its
    control paths.
    """

    def __init__(
        self,
        ports: int | None = None,
        *,
        profiles: Sequence[Profile | None] | None = None,
        seed: int = 0,
        bucket: float = DEFAULT_BUCKET,
        start_timeout: float = 15.0,
        stop_timeout: float = 5.0,
    ) -> None:
        if profiles is not None:
            if ports is not None and ports != len(profiles):
                raise ValueError(f"ports={ports} but {len(profiles)} profiles: give one or other")
            ports = len(profiles)
        elif ports is None:
            ports = 2
        if ports < 1:
            raise ValueError(f"ports must be >= 1, got {ports}")
        if not 0 < bucket <= 60:
            raise ValueError(f"bucket must be more than 0 and at most 60 s, got {bucket}")
        self._count = ports
        self._profiles = None if profiles is None else list(profiles)
        self._seed = seed
        self._bucket = bucket
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._process: asyncio.subprocess.Process | None = None
        self.ports: list[int] = []

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has ended (None while it runs or before start)."""
        return None if self._process is None else self._process.returncode

    def url(self, index: int = 0, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports[index]}{path}"

    async def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("the upstream process was already started")
        if self._profiles is None:
            layout = ["--ports", str(self._count)]
        else:
            layout = ["--profiles", profiles_to_json(self._profiles)]
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "resilient_client.testing._upstream",
            *layout,
            "--seed",
            str(self._seed),
            "--bucket",
            repr(self._bucket),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # Out of the terminal's process group: Ctrl-C interrupts the bench, which then
            # stops the upstream itself, instead of the upstream dying with a traceback.
            start_new_session=True,
        )
        try:
            self.ports = await asyncio.wait_for(self._read_ports(), self._start_timeout)
        except BaseException:
            await self.stop()
            raise

    async def _read_ports(self) -> list[int]:
        assert self._process is not None
        assert self._process.stdout is not None
        line = await self._process.stdout.readline()
        if not line:
            code = await self._process.wait()
            raise RuntimeError(f"the upstream process exited (code {code}) before listening")
        try:
            ports = json.loads(line)["ports"]
        except (ValueError, KeyError, TypeError):
            ports = None
        if (
            not isinstance(ports, list)
            or len(ports) != self._count
            or not all(isinstance(port, int) for port in ports)
        ):
            raise RuntimeError(f"the upstream process announced no usable ports: {line!r}")
        return ports

    async def stats(self) -> dict[str, Any]:
        """The server's counts (see ``GET /__stats`` in the module docstring)."""
        answer: dict[str, Any] = json.loads(await self._control(self.ports[0], STATS_PATH))
        return answer

    async def restart_clock(self, *indexes: int) -> None:
        """Restart the clock, counts and random draws of the ports at these indexes (none: all)."""
        if not indexes:
            await self._control(self.ports[0], START_PATH + "?all=1")
        for index in indexes:
            await self._control(self.ports[index], START_PATH)

    async def set_clock(self, *indexes: int, at: float) -> None:
        """Set the counting clocks of the ports at these indexes to read ``at`` seconds now."""
        for index in indexes:
            await self._control(self.ports[index], f"{CLOCK_PATH}?at={at!r}")

    async def _control(self, port: int, target: str, timeout: float = 10.0) -> bytes:
        """One control request on a connection of its own; the answer's body."""
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                writer.write(
                    f"GET {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                    "Connection: close\r\n\r\n".encode("ascii")
                )
                await writer.drain()
                answer = await reader.read()  # the server closes after answering
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        head, _, body = answer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the upstream answered {target} with {head[:60]!r}")
        return body

    async def stop(self) -> None:
        """Close its stdin (its signal to stop), then terminate and kill it if it lingers."""
        process = self._process
        if process is None:
            return
        # Closed even when the process is gone already: an open pipe keeps its transport alive.
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        if process.returncode is not None:
            return
        for escalate in (process.terminate, process.kill):
            try:
                await asyncio.wait_for(process.wait(), self._stop_timeout)
                return
            except TimeoutError:
                # It may have exited between the timeout and the signal.
                with contextlib.suppress(ProcessLookupError):
                    escalate()
        # SIGKILL cannot be ignored; the bound only guards against a stuck wait().
        await asyncio.wait_for(process.wait(), self._stop_timeout)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


async def _serve_until_stdin_closes(
    count: int, profiles: list[Profile | None] | None, seed: int, bucket: float
) -> None:
    upstream = Upstream(seed=seed, bucket=bucket)
    await upstream.start(count, profiles)
    print(json.dumps({"ports": upstream.ports}), flush=True)
    loop = asyncio.get_running_loop()
    # The parent holds our stdin: when it exits or closes it, we stop too.
    await loop.run_in_executor(None, sys.stdin.read)
    await upstream.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="fault-injecting HTTP/1.1 upstream on 127.0.0.1")
    parser.add_argument("--ports", type=int, default=1, help="how many ports to listen on")
    parser.add_argument(
        "--profiles",
        type=profiles_from_json,
        help="JSON list of fault profiles, one port each (null: a query-string port)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the profiles' random draws")
    parser.add_argument(
        "--bucket", type=float, default=DEFAULT_BUCKET, help="timeline bucket width in seconds"
    )
    args = parser.parse_args()
    asyncio.run(_serve_until_stdin_closes(args.ports, args.profiles, args.seed, args.bucket))


if __name__ == "__main__":
    main()
