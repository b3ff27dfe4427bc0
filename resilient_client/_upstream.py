"""A small fault-injecting HTTP/1.1 upstream on 127.0.0.1, for the demo, benchmarks and tests.

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
=================  ===========================================================

It counts requests per port and keeps the headers of the most recent ones, so
tests and benchmarks measure load at the server (``GET /__stats`` gives the
counts as JSON, for a client in another process). Only 127.0.0.1 is ever bound.

Run it in a thread of this process (:class:`UpstreamThread`) for functional
tests, or as its own process (:class:`UpstreamProcess`) wherever latency or CPU
is measured: a server thread shares the client's GIL, and every hand-over
between the two can cost a GIL switch interval (5 ms). As a process,
``python -m resilient_client._upstream --ports 2`` prints one JSON line with the
ports, then serves until its stdin closes.
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
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self
from urllib.parse import parse_qsl

__all__ = ["RecordedRequest", "Upstream", "UpstreamProcess", "UpstreamThread"]

HOST = "127.0.0.1"
# GET this path on any port for {"received": {port: count}} as JSON.
STATS_PATH = "/__stats"
_MAX_HEAD = 64 * 1024
_REASONS = {
    200: "OK",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    port: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the request was read


@dataclass
class Upstream:
    """The server state: listening ports, counters and recent requests."""

    ports: list[int] = field(default_factory=list)
    received: Counter[int] = field(default_factory=Counter)
    recent: deque[RecordedRequest] = field(default_factory=lambda: deque(maxlen=1000))
    open_connections: int = 0
    _servers: list[asyncio.Server] = field(default_factory=list)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, count: int = 1) -> None:
        for _ in range(count):
            server = await asyncio.start_server(self._serve, HOST, 0, backlog=1024)
            self._servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])

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
        body = await _read_body(reader, headers)
        if target == STATS_PATH:
            # How a benchmark in another process reads the counts; not counted itself.
            stats = json.dumps({"received": {str(p): n for p, n in self.received.items()}})
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Length: {len(stats)}\r\n"
                f"Content-Type: application/json\r\n\r\n{stats}".encode()
            )
            await writer.drain()
            return True
        self.received[port] += 1
        self.recent.append(RecordedRequest(port, method, target, headers, body, time.monotonic()))

        _, _, query = target.partition("?")
        options = dict(parse_qsl(query))
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
            for key, name in (("retry_after", "Retry-After"), ("location", "Location"))
            if key in options
        )
        reason = _REASONS.get(status, "Status")
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Length: {size}\r\n"
            f"Content-Type: text/plain\r\n{extra}\r\n".encode("latin-1")
        )
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
        else:
            writer.write(b"x" * size)
        await writer.drain()
        return headers.get("connection", "").lower() != "close"


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() != "chunked":
        return b""
    chunks: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return b"".join(chunks)
        chunks.append(chunk[:-2])


class UpstreamThread:
    """An :class:`Upstream` served by its own event loop in a background thread.

    The client under test then never shares its event loop with the server, as
    it would not in production.
    """

    def __init__(self, ports: int = 1) -> None:
        self._count = ports
        self.upstream = Upstream()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Upstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.upstream.start(self._count), self._loop).result(5)
        return self.upstream

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.upstream.stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


class UpstreamProcess:
    """``python -m resilient_client._upstream`` in a process of its own, on 127.0.0.1.

    A process rather than a thread, so that the server never competes with the
    client under test for the same interpreter lock. Use as ``async with``: it is
    stopped on the way out whatever happened inside.
    """

    def __init__(
        self, ports: int = 2, *, start_timeout: float = 15.0, stop_timeout: float = 5.0
    ) -> None:
        if ports < 1:
            raise ValueError(f"ports must be >= 1, got {ports}")
        self._count = ports
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
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "resilient_client._upstream",
            "--ports",
            str(self._count),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # Out of the terminal's process group: Ctrl-C interrupts the demo, which then
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


async def _serve_until_stdin_closes(count: int) -> None:
    upstream = Upstream()
    await upstream.start(count)
    print(json.dumps({"ports": upstream.ports}), flush=True)
    loop = asyncio.get_running_loop()
    # The parent holds our stdin: when it exits or closes it, we stop too.
    await loop.run_in_executor(None, sys.stdin.read)
    await upstream.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="fault-injecting HTTP/1.1 upstream on 127.0.0.1")
    parser.add_argument("--ports", type=int, default=1, help="how many ports to listen on")
    args = parser.parse_args()
    asyncio.run(_serve_until_stdin_closes(args.ports))


if __name__ == "__main__":
    main()
