"""HTTP/1.1 pipelining for the small GETs a training job sends to volume servers.

A dataset of small files costs one request per file, and on a loaded machine the cost of a
request is mostly fixed: the client library's machinery and one ``send`` per request. Volume
servers (Go's ``net/http``) answer pipelined requests in order, so :class:`Pipelines` writes
requests back to back on a few keep-alive connections per server and reads the answers as they
come; a batch of requests costs a few system calls instead of one each.

Only small bodies go this way (the caller decides): a large one would hold up the answers
queued behind it. A connection that breaks, times out or answers out of protocol fails every
request waiting on it with :class:`TransportError` (the needle reader retries them); a request
whose connection closed before it was answered is resent once on a fresh connection, as
clients do when a server closes an idle keep-alive connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from multidict import CIMultiDict

from ..errors import RequestTimeoutError, TransportError, UnreachableError

CONNECTIONS_PER_SERVER = 4
"""Keep-alive connections per volume server; requests are spread over them."""
QUEUE_PER_CONNECTION = 8
"""A new connection is opened once every open one has this many answers outstanding."""
MAX_HEADER_BYTES = 64 * 1024


@dataclass
class Answer:
    """One response: status, headers and the whole body."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    at: float = 0.0
    """When it was read off the connection (``time.perf_counter()``)."""


class ConnectionLost(TransportError):
    """The connection ended before this request's answer began (safe to resend a GET)."""


class _Connection:
    """One keep-alive connection: requests go out in order, answers are matched in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 where: str) -> None:
        self.reader, self.writer, self.where = reader, writer, where
        self.waiting: deque[asyncio.Future[Answer]] = deque()
        self.closed = False
        self.task = asyncio.ensure_future(self._read_answers())
        self._outgoing: list[bytes] = []
        self._deadlines: deque[float] = deque()  # of the waiting requests, in order
        self._watchdog: asyncio.TimerHandle | None = None

    def send(self, request: bytes, timeout: float) -> asyncio.Future[Answer]:
        """Queue ``request``; the requests of one loop iteration leave in one write. Its
        answer must begin within ``timeout`` s, else it fails with :class:`_Expired`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        self.waiting.append(future)
        self._deadlines.append(loop.time() + timeout)
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._deadlines[0], self._check_deadline)
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(request)
        return future

    @property
    def filling(self) -> bool:
        """Whether requests of this loop iteration wait to leave in one write."""
        return bool(self._outgoing)

    def _check_deadline(self) -> None:
        """One timer per connection, not per request: answers come in order, so only the
        oldest waiting request can be the first one late."""
        self._watchdog = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= self._deadlines[0]:  # fail it (even if its caller left) and drop
            _expire(self.waiting[0])  # the connection: the ones behind it are resent
            self.abort(TransportError(f"{self.where}: an earlier answer timed out"))
            return
        self._watchdog = loop.call_at(self._deadlines[0], self._check_deadline)

    def _answered(self) -> asyncio.Future[Answer]:
        self._deadlines.popleft()
        return self.waiting.popleft()

    def _flush(self) -> None:
        data, self._outgoing = b"".join(self._outgoing), []
        if not self.closed:
            self.writer.write(data)

    def abort(self, error: TransportError) -> None:
        """Fail what is waiting and drop the connection (no graceful close: answers still
        in flight would be misread)."""
        self.closed = True
        self.writer.transport.abort()
        self._fail(error)

    async def _read_answers(self) -> None:
        try:
            while True:
                answer, close = await _read_answer(self.reader, self.where)
                if not self.waiting:
                    raise TransportError(f"{self.where} sent an answer nobody asked for")
                future = self._answered()
                if not future.done():
                    future.set_result(answer)
                if close:
                    break
        except asyncio.IncompleteReadError as exc:
            self._fail(ConnectionLost(f"connection to {self.where} closed") if not exc.partial
                       else TransportError(f"answer from {self.where} cut short"))
        except (TransportError, OSError, asyncio.LimitOverrunError, ValueError) as exc:
            self._fail(exc if isinstance(exc, TransportError) else TransportError(
                f"bad answer from {self.where}: {type(exc).__name__}: {exc}"))
        finally:
            self.closed = True
            self.writer.transport.abort()
            self._fail(ConnectionLost(f"connection to {self.where} closed"))

    def _fail(self, error: TransportError) -> None:
        """The first waiter gets ``error``; those queued behind it were never answered, so
        they may be resent."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        behind: TransportError = ConnectionLost(
            f"{self.where}: an earlier answer failed ({error})")
        while self.waiting:
            future = self._answered()
            if not future.done():  # the first may have failed already (timed out, left)
                future.set_exception(error)
            error = behind


class _Server:
    """The connections to one ``host:port``."""

    def __init__(self, host: str, port: int, connect_timeout: float) -> None:
        self.host, self.port, self.where = host, port, f"{host}:{port}"
        self.connect_timeout = connect_timeout
        self.connections: list[_Connection] = []
        self.readers: set[asyncio.Task[None]] = set()  # every connection's, until it ends
        self._opening: asyncio.Future[_Connection] | None = None

    async def connection(self) -> _Connection:
        self.connections = [c for c in self.connections if not c.closed]
        for connection in self.connections:  # requests of one loop iteration share a write
            if connection.filling and len(connection.waiting) < 2 * QUEUE_PER_CONNECTION:
                return connection
        best = min(self.connections, key=lambda c: len(c.waiting), default=None)
        if best is not None and (len(best.waiting) < QUEUE_PER_CONNECTION
                                 or len(self.connections) >= CONNECTIONS_PER_SERVER):
            return best
        if self._opening is None:  # one connect at a time; others share it
            self._opening = asyncio.ensure_future(self._open())
            self._opening.add_done_callback(_retrieve)
        opening = self._opening
        try:
            return await asyncio.shield(opening)
        finally:
            if self._opening is opening and opening.done():
                self._opening = None

    async def _open(self) -> _Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=MAX_HEADER_BYTES),
                self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise UnreachableError(f"cannot connect to {self.where} ({reason})") from None
        connection = _Connection(reader, writer, self.where)
        self.connections.append(connection)
        self.readers.add(connection.task)
        connection.task.add_done_callback(self.readers.discard)
        return connection


class Pipelines:
    """Pipelined GETs to any number of servers (one :class:`Pipelines` per client)."""

    def __init__(self, connect_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._servers: dict[str, _Server] = {}

    async def get(self, server: str, target: str, headers: dict[str, str],
                  timeout: float) -> Answer:
        """``GET target`` on ``server`` (``host:port``); the answer within ``timeout`` s of
        being queued, else :class:`RequestTimeoutError` (and the connection is dropped)."""
        request = request_bytes(server, target, headers)
        for resend in (False, True):
            connection = await self._server(server).connection()
            try:
                return await connection.send(request, timeout)
            except _Expired:
                raise RequestTimeoutError(f"GET http://{server}{target.split('?')[0]}: "
                                          f"no answer within {timeout:g}s") from None
            except ConnectionLost:
                if resend:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def get_many(self, server: str, requests: Sequence[tuple[str, dict[str, str]]],
                       timeout: float, limit: int) -> list[Answer | BaseException]:
        """``GET target`` with ``headers`` for each of ``requests``, pipelined on ``server``
        with at most ``limit`` in flight; each answer, or the error that took its place (no
        resend: a failed one is the caller's to read again)."""
        place = self._server(server)
        out: list[Answer | BaseException] = []
        waiting: dict[asyncio.Future[Answer], int] = {}
        connection: _Connection | None = None
        try:
            for i, (target, headers) in enumerate(requests):
                if len(waiting) >= limit:
                    await _collect(waiting, out, asyncio.FIRST_COMPLETED)
                if (connection is None or connection.closed
                        or len(connection.waiting) >= 2 * QUEUE_PER_CONNECTION):
                    connection = await place.connection()  # (the one filling, while it may)
                out.append(ConnectionLost("not answered"))  # (its place, until answered)
                waiting[connection.send(request_bytes(server, target, headers), timeout)] = i
            await _collect(waiting, out, asyncio.ALL_COMPLETED)
        finally:
            for future in waiting:  # cancelled: nobody will take these answers
                future.cancel()
        return out

    def _server(self, server: str) -> _Server:
        found = self._servers.get(server)
        if found is None:
            host, _, port = server.rpartition(":")
            found = self._servers[server] = _Server(host.strip("[]"), int(port),
                                                    self._connect_timeout)
        return found

    async def close(self) -> None:
        connections = [c for s in self._servers.values() for c in s.connections]
        readers = [t for s in self._servers.values() for t in s.readers]
        self._servers.clear()
        for connection in connections:
            connection.abort(ConnectionLost("client closed"))
        for reader in readers:  # also those of connections dropped earlier, still ending
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    def abandon_after_fork(self, keep_alive: list[object]) -> None:
        """In a forked child: close our copies of the sockets without touching the parent's
        event loop; the objects go to ``keep_alive`` so that no finalizer runs."""
        for server in self._servers.values():
            for connection in server.connections:
                close_inherited_socket(connection.writer.transport)
                keep_alive.append(connection)
        self._servers = {}


def close_inherited_socket(transport: asyncio.BaseTransport | None) -> None:
    """In a forked child: close this process's copy of ``transport``'s socket, leaving the
    parent's (and its event loop) alone."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.fileno() >= 0:
        with contextlib.suppress(OSError):
            os.close(sock.fileno())


class _Expired(Exception):
    """Set on a request whose answer did not come in time."""


def _expire(future: asyncio.Future[Answer]) -> None:
    if not future.done():
        future.set_exception(_Expired())


async def _collect(waiting: dict[asyncio.Future[Answer], int],
                   out: list[Answer | BaseException], when: str) -> None:
    """Wait for some (``when``) of the ``waiting`` answers; each goes to its place in
    ``out``."""
    done, _ = await asyncio.wait(waiting, return_when=when)
    for future in done:
        index = waiting.pop(future)
        error = None if future.cancelled() else future.exception()
        out[index] = error or (future.result() if not future.cancelled()
                               else ConnectionLost("cancelled"))


def _retrieve(future: asyncio.Future[_Connection]) -> None:
    """Its waiters got the error (or were cancelled): mark it seen."""
    if not future.cancelled():
        future.exception()


def request_bytes(server: str, target: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {server}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(head: bytes, where: str) -> tuple[int, CIMultiDict[str], bool]:
    """An answer's status line and headers (``head`` without its blank line): status,
    headers, and whether the server closes the connection afterwards."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status_text = rest[:3]
    if not version.startswith("HTTP/1.") or not status_text.isdigit():
        raise TransportError(f"{where} answered {lines[0][:60]!r}, not HTTP/1.x")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    close = version == "HTTP/1.0" or headers.get("Connection", "").lower() == "close"
    return int(status_text), headers, close


async def _read_answer(reader: asyncio.StreamReader, where: str) -> tuple[Answer, bool]:
    """One answer off the connection; and whether the server closes it afterwards."""
    head = await reader.readuntil(b"\r\n\r\n")
    status, headers, close = parse_head(head[:-4], where)
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        body = await _read_chunked(reader)
    elif "Content-Length" in headers:
        body = await reader.readexactly(int(headers["Content-Length"]))
    elif status in (204, 304) or status < 200:
        body = b""
    else:  # the body ends when the connection does
        body, close = await reader.read(), True
    return Answer(status, headers, body, time.perf_counter()), close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


__all__ = ["Answer", "ConnectionLost", "Pipelines", "close_inherited_socket", "parse_head",
           "request_bytes"]
