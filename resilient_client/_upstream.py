"""A small fault-injecting HTTP/1.1 upstream on 127.0.0.1, for the demo, benchmarks and tests.

Each request says how it should be answered, in its query string, so one
server can play a healthy host, a slow one and a broken one at once:

=================  ===========================================================
``delay=S``        wait S seconds before answering
``status=N``       answer with status N (default 200)
``hang=1``         read the request, never answer
``drip=S``         send the headers, then the body one byte every S seconds
``size=N``         body of N bytes (default 2)
``reset=1``        close the connection without answering
``retry_after=V``  add a ``Retry-After: V`` header
``location=URL``   add a ``Location: URL`` header (with ``status=302``: a redirect)
=================  ===========================================================

It counts requests per port and keeps the headers of the most recent ones, so
tests and benchmarks measure load at the server. Only 127.0.0.1 is ever bound.

Run it in a thread of this process (:class:`UpstreamThread`) for functional
tests, or as its own process (:func:`upstream_process`) wherever latency or CPU
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
import subprocess
import sys
import threading
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

__all__ = ["RecordedRequest", "Upstream", "UpstreamThread", "upstream_process"]

HOST = "127.0.0.1"
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
        self.received[port] += 1
        self.recent.append(RecordedRequest(port, method, target, headers, body))

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
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Length: {size}\r\n"
            f"Content-Type: text/plain\r\n{extra}\r\n".encode("latin-1")
        )
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


@contextlib.contextmanager
def upstream_process(ports: int = 1, *, start_timeout: float = 20.0) -> Iterator[list[int]]:
    """Run the upstream as its own process; yields its ports; always stops it by its PID."""
    process = subprocess.Popen(
        [sys.executable, "-m", "resilient_client._upstream", "--ports", str(ports)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = threading.Timer(start_timeout, process.kill)  # never wait forever for it
        ready.start()
        try:
            line = process.stdout.readline()
        finally:
            ready.cancel()
        if not line:
            raise RuntimeError(f"the upstream process exited early ({process.poll()})")
        yield list(json.loads(line)["ports"])
    finally:
        if process.stdin is not None:
            process.stdin.close()  # asks it to stop
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


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
