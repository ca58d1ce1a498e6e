"""A scripted HTTP/1.1 server for the connection-level tests (pipelining, bulk reads)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

# A script answers one request (its target) with raw bytes, or None to hang up at once;
# bytes ending in HANG_UP are sent (without it), then the connection is closed.
# An answer may also be a list of pieces and pauses (seconds), sent in turn.
Script = Callable[[str, int], bytes | list[bytes | float] | None]
HANG_UP = b"<hang up>"


class Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


def run_scripted(script: Script, make_client: Callable[[], C],
                 body: Callable[[C, str, ScriptedServer], Awaitable[None]]) -> None:
    """Run ``body(client, address, server)`` against a server answering with ``script``;
    the client (from ``make_client``) is closed afterwards."""
    async def main() -> None:
        server = ScriptedServer(script)
        client = make_client()
        async with server as address:
            try:
                await body(client, address, server)
            finally:
                await client.close()

    asyncio.run(main())


def ok(body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


class ScriptedServer:
    """Reads pipelined GETs and answers each with ``script(target, n)`` (n counts requests
    over all connections)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests = 0
        self.connections = 0
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ")[1].decode()
                self.requests += 1
                answer = self.script(target, self.requests)
                if answer is None:
                    break
                pieces = answer if isinstance(answer, list) else [answer]
                for piece in pieces:
                    if isinstance(piece, float):
                        await asyncio.sleep(piece)
                        continue
                    writer.write(piece.removesuffix(HANG_UP))
                    await writer.drain()
                if pieces and isinstance(pieces[-1], bytes) and pieces[-1].endswith(HANG_UP):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


_KEPT: list[object] = []  # abandoned connections must never be finalized (as in a child)


def open_after_fork(abandon: Callable[[list[object]], None], fds: list[int]) -> int:
    """How many of ``fds`` are still open in a forked child after ``abandon(keep_alive)``
    (the child never touches the parent's loop; it reports through its exit code)."""
    pid = os.fork()
    if pid == 0:
        abandon(_KEPT)
        still_open = 0
        for fd in fds:
            try:
                os.fstat(fd)
                still_open += 1
            except OSError:
                pass
        os._exit(10 + still_open)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) - 10
