"""Large GETs received straight into their place in the caller's buffer.

A whole-file read of a large file is the sum of its chunks' needle reads. Through aiohttp
every piece the socket delivers becomes a ``bytes``, goes through the parser into a queue, and
the pieces are joined at the end: three copies and Python work per piece. Here a connection
is an :class:`asyncio.BufferedProtocol`: once an answer's head is parsed, the kernel copies the
body directly into the slice of the result it belongs to (one copy, no object per piece).

Only a plain answer goes there: status 200 or 206 with a ``Content-Length`` equal to the
slice. Any other answer (an error status, a server that ignored ``Range``) is read whole into
a buffer of its own and returned, for the caller to treat like any response. A connection
that breaks mid-answer or answers out of protocol fails its request with
:class:`TransportError`; one that delivers no byte for ``timeout`` seconds with
:class:`RequestTimeoutError` (it is dropped); a kept-alive connection the server closed before
answering is replaced and the request resent once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from multidict import CIMultiDict

from ..errors import RequestTimeoutError, TransportError, UnreachableError
from .pipeline import ConnectionLost, close_inherited_socket, parse_head, request_bytes

HEAD_LIMIT = 64 * 1024
"""The most an answer's status line and headers may take."""


@dataclass
class BulkAnswer:
    """One answer; ``body`` is None when it went into the caller's buffer."""

    status: int
    headers: CIMultiDict[str]
    body: bytes | None


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.progress = 0  # bytes received since the watchdog last looked
        self._head = bytearray(HEAD_LIMIT)
        self._answer: asyncio.Future[BulkAnswer] | None = None
        self._reset()

    def _reset(self) -> None:
        self._head_len = 0
        self._into: memoryview | None = None
        self._body: memoryview | None = None
        self._filled = 0
        self._direct = False
        self._parsed: tuple[int, CIMultiDict[str], bool] | None = None

    def send(self, request: bytes, into: memoryview) -> asyncio.Future[BulkAnswer]:
        assert self.transport is not None
        self._reset()
        self._into = into
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        begun = self._head_len > 0 or self._body is not None
        self._fail(TransportError(f"answer from {self.where} cut short") if begun
                   else ConnectionLost(f"connection to {self.where} closed"))

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body is not None:
            return self._body[self._filled:]
        return memoryview(self._head)[self._head_len:]

    def buffer_updated(self, nbytes: int) -> None:
        self.progress += nbytes
        if self._body is not None:
            self._filled += nbytes
            if self._filled == len(self._body):
                self._finish()
            return
        self._head_len += nbytes
        if self._answer is None or self._answer.done():
            self.abort(TransportError(f"{self.where} sent an answer nobody asked for"))
            return
        try:
            self._take_head()
        except TransportError as exc:
            self.abort(exc)

    def _take_head(self) -> None:
        """Parse the head once it is complete; the body goes to its buffer from then on."""
        end = self._head.find(b"\r\n\r\n", 0, self._head_len)
        if end < 0:
            if self._head_len == HEAD_LIMIT:
                raise TransportError(f"{self.where} sent a head over {HEAD_LIMIT} bytes")
            return
        status, headers, close = parse_head(bytes(self._head[:end]), self.where)
        length = _content_length(headers, self.where)
        assert self._into is not None
        self._direct = status in (200, 206) and length == len(self._into)
        body = self._into if self._direct else memoryview(bytearray(length))
        early = self._head_len - (end + 4)
        if early > length:
            raise TransportError(f"{self.where} sent more than the answer's Content-Length")
        body[:early] = self._head[end + 4:self._head_len]
        self._parsed, self._body, self._filled = (status, headers, close), body, early
        if early == length:
            self._finish()

    def _finish(self) -> None:
        assert self._parsed is not None and self._body is not None
        status, headers, close = self._parsed
        answer = BulkAnswer(status, headers, None if self._direct else bytes(self._body))
        future = self._answer
        self._answer = None
        self._reset()
        if close:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        if future is not None and not future.done():
            future.set_result(answer)

    def abort(self, error: TransportError) -> None:
        """Fail the request in flight and drop the connection."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._fail(error)

    def _fail(self, error: TransportError) -> None:
        future, self._answer = self._answer, None
        if future is not None and not future.done():
            future.set_exception(error)


def _content_length(headers: CIMultiDict[str], where: str) -> int:
    value = headers.get("Content-Length", "")
    if "chunked" in headers.get("Transfer-Encoding", "").lower() or not value.isdigit():
        raise TransportError(f"{where} answered without a Content-Length")
    return int(value)


class BulkGets:
    """Large GETs to any number of servers (one :class:`BulkGets` per client)."""

    def __init__(self, connect_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._idle: dict[str, list[_Connection]] = {}
        self._busy: set[_Connection] = set()

    async def get(self, server: str, target: str, headers: dict[str, str], timeout: float,
                  into: memoryview) -> BulkAnswer:
        """``GET target`` on ``server`` (``host:port``), a 200/206 body of ``len(into)``
        bytes received into ``into`` (see the module docstring)."""
        request = request_bytes(server, target, headers)
        for resend in (False, True):
            connection, reused = await self._connection(server)
            self._busy.add(connection)
            try:
                answer = await _watched(connection, connection.send(request, into), timeout,
                                        f"GET http://{server}{target.split('?')[0]}")
            except ConnectionLost:
                if resend or not reused:
                    raise
                continue
            except BaseException:
                connection.abort(ConnectionLost("request abandoned"))
                raise
            finally:
                self._busy.discard(connection)
            if not connection.closed:
                self._idle.setdefault(server, []).append(connection)
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connection(self, server: str) -> tuple[_Connection, bool]:
        idle = self._idle.get(server, [])
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection, True
        host, _, port = server.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(server), host.strip("[]"),
                                       int(port)), self._connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise UnreachableError(f"cannot connect to {server} ({reason})") from None
        return connection, False

    def _connections(self) -> list[_Connection]:
        return [c for idle in self._idle.values() for c in idle] + list(self._busy)

    async def close(self) -> None:
        for connection in self._connections():
            connection.abort(ConnectionLost("client closed"))
        self._idle, self._busy = {}, set()

    def abandon_after_fork(self, keep_alive: list[object]) -> None:
        """In a forked child: close our copies of the sockets without touching the parent's
        event loop; the objects go to ``keep_alive`` so that no finalizer runs."""
        for connection in self._connections():
            close_inherited_socket(connection.transport)
            keep_alive.append(connection)
        self._idle, self._busy = {}, set()


async def _watched(connection: _Connection, answer: asyncio.Future[BulkAnswer],
                   timeout: float, what: str) -> BulkAnswer:
    """``answer``, unless ``connection`` goes ``timeout`` seconds without a byte."""
    loop = asyncio.get_running_loop()
    handle: asyncio.TimerHandle | None = None

    def check() -> None:
        nonlocal handle
        if answer.done():
            return
        if connection.progress == 0:
            connection.abort(RequestTimeoutError(f"{what}: no data for {timeout:g}s"))
            return
        connection.progress = 0
        handle = loop.call_later(timeout, check)

    connection.progress = 0
    handle = loop.call_later(timeout, check)
    try:
        return await answer
    finally:
        assert handle is not None
        handle.cancel()


__all__ = ["BulkAnswer", "BulkGets"]
