"""HTTP/1.1 on the wire for the upstream: reading a request's body, writing an answer's head,
and answering as a fault profile decided."""

from __future__ import annotations

import asyncio
import contextlib

from ._profiles import Action, Profile

__all__ = ["answer_as_profiled", "read_body", "status_head"]

_REASONS = {
    200: "OK",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def status_head(status: int, size: int, extra: str = "") -> bytes:
    reason = _REASONS.get(status, "Status")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Length: {size}\r\n"
        f"Content-Type: text/plain\r\n{extra}\r\n".encode("latin-1")
    )


async def answer_as_profiled(
    action: Action, profile: Profile, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    """Answer one request as its profile decided; whether the connection may be reused."""
    kind = action.kind
    if kind == "reset":
        writer.transport.abort()
        return False
    if kind == "hang":
        # Wait for the client to give up (EOF) rather than forever, so that hung
        # handlers end with their connections; closed without an answer after hang_for.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.read(1), action.delay)
        return False
    if action.delay > 0:
        await asyncio.sleep(action.delay)
    if kind == "drip":
        writer.write(status_head(200, profile.drip_bytes))
        for _ in range(profile.drip_bytes):
            await writer.drain()
            await asyncio.sleep(profile.drip_interval)
            writer.write(b"x")
    else:
        extra = "" if action.retry_after is None else f"Retry-After: {action.retry_after}\r\n"
        writer.write(status_head(action.status, profile.body_size, extra))
        writer.write(b"x" * profile.body_size)
    await writer.drain()
    return True


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
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
