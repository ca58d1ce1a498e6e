"""Unary gRPC calls over cleartext HTTP/2 (h2c), without grpcio.

grpcio is not fork-safe and this package runs inside PyTorch DataLoader workers, so it speaks
just enough gRPC itself: one unary call per fresh connection, driven by the pure-Python ``h2``
state machine on asyncio streams. The request goes out in frames no larger than the peer allows,
waiting for ``WINDOW_UPDATE`` when the flow-control window is spent, so a ``CreateEntry`` with
the chunk list of a multi-gigabyte file fits as well as a ``GetFilerConfiguration``. The
connection is closed before the coroutine returns; nothing outlives it, so nothing crosses a
fork.
"""

from __future__ import annotations

import asyncio
import struct
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from ..errors import (
    RequestTimeoutError,
    SeaweedDataError,
    ServerError,
    TransportError,
    UnreachableError,
)

MAX_REPLY_BYTES = 4 * 1024 * 1024  # our replies are a few hundred bytes
_READ_SIZE = 64 * 1024


def authority(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def grpc_frame(message: bytes) -> bytes:
    """Length-prefix one message: compressed flag 0, 4-byte big-endian length, message."""
    return struct.pack(">BI", 0, len(message)) + message


def grpc_unframe(body: bytes, where: str) -> bytes:
    """The single uncompressed message of a unary reply body."""
    if len(body) < 5:
        raise ServerError(f"gRPC reply from {where} is truncated ({len(body)} bytes)")
    compressed, length = struct.unpack(">BI", body[:5])
    if compressed:
        raise ServerError(f"gRPC reply from {where} is compressed; we asked for identity")
    if len(body) != 5 + length:
        raise ServerError(f"gRPC reply from {where} has {len(body) - 5} bytes, framed {length}")
    return body[5:]


def _header_dict(headers: Iterable[tuple[str | bytes, str | bytes]]) -> dict[str, str]:
    """HTTP/2 header pairs as a ``str`` dict (h2 decodes them, but types them loosely)."""
    def text(value: str | bytes) -> str:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return {text(name): text(value) for name, value in headers}


@dataclass
class _Reply:
    """Collects the events of one HTTP/2 response stream."""

    where: str
    stream_id: int
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    received: int = 0

    def handle(self, conn: h2.connection.H2Connection, event: h2.events.Event) -> None:
        """Apply one h2 event; raise :class:`ServerError` when the stream is broken."""
        if isinstance(event, h2.events.ConnectionTerminated) and not self.ended:
            raise ServerError(f"{self.where} closed the HTTP/2 connection (GOAWAY "
                              f"{event.error_code!s}) before replying")
        if getattr(event, "stream_id", None) != self.stream_id:
            return
        if isinstance(event, h2.events.ResponseReceived):
            self.headers = _header_dict(event.headers)
        elif isinstance(event, h2.events.TrailersReceived):
            self.trailers = _header_dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self.body += event.data
            conn.acknowledge_received_data(event.flow_controlled_length, self.stream_id)
            if len(self.body) > MAX_REPLY_BYTES:
                raise ServerError(f"gRPC reply from {self.where} exceeds {MAX_REPLY_BYTES} bytes")
        elif isinstance(event, h2.events.StreamReset):
            raise ServerError(f"{self.where} reset the gRPC stream ({event.error_code!s})")
        elif isinstance(event, h2.events.StreamEnded):
            self.ended = True

    def message(self) -> bytes:
        """Check the HTTP and gRPC status of the finished stream and return its message."""
        status = self.headers.get(":status", "")
        if status != "200":
            code = int(status) if status.isdigit() else None
            raise ServerError(f"{self.where} answered HTTP {status or '?'}, not gRPC", code)
        if not self.headers.get("content-type", "").startswith("application/grpc"):
            raise ServerError(f"{self.where} answered {self.headers.get('content-type')!r}, "
                              "not application/grpc")
        # A reply without a message ("Trailers-Only") carries grpc-status in its headers.
        meta = self.trailers or self.headers
        grpc_status = meta.get("grpc-status")
        if grpc_status != "0":
            detail = urllib.parse.unquote(meta.get("grpc-message", ""))
            raise ServerError(f"gRPC call to {self.where} failed: status {grpc_status} {detail}")
        return grpc_unframe(bytes(self.body), self.where)


def _request_headers(authority: str, path: str, timeout: float) -> list[tuple[str, str]]:
    """The HTTP/2 headers of a unary gRPC request."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", f"{max(1, int(timeout * 1000))}m"),
        ("user-agent", "seaweed-data"),
    ]


async def _read_chunk(reader: asyncio.StreamReader, reply: _Reply) -> bytes:
    """The next bytes from the server; an HTTP/1 answer or a hang-up is a :class:`ServerError`."""
    chunk = await reader.read(_READ_SIZE)
    hint = "is this the filer's gRPC port (by default its HTTP port + 10000)?"
    if not reply.received and chunk.startswith(b"HTTP/1."):
        raise ServerError(f"{reply.where} answered HTTP/1.x, not gRPC over h2c; {hint}")
    if not chunk:
        raise ServerError(f"{reply.where} closed the connection before replying; {hint}")
    reply.received += len(chunk)
    return chunk


async def _connect(host: str, port: int, where: str, timeout: float) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TCP connection or raise :class:`UnreachableError` naming ``where``."""
    try:
        return await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except asyncio.TimeoutError as exc:
        raise UnreachableError(f"cannot connect to {where}: timed out after {timeout:g}s") from exc
    except (OSError, OverflowError, ValueError) as exc:  # Overflow: a port past 65535
        raise UnreachableError(
            f"cannot connect to {where}: {getattr(exc, 'strerror', None) or exc}") from exc


async def _close(writer: asyncio.StreamWriter, timeout: float) -> None:
    """Close gracefully within ``timeout``, else abort; never raise."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), max(timeout, 0.01))
    except (OSError, asyncio.TimeoutError):
        writer.transport.abort()


class _Call:
    """One request/response exchange on a fresh HTTP/2 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 reply: _Reply) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.reader, self.writer, self.reply = reader, writer, reply

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def receive(self) -> None:
        """Read what the server sent and apply it (settings, window updates, the reply)."""
        chunk = await _read_chunk(self.reader, self.reply)
        for event in self.conn.receive_data(chunk):
            self.reply.handle(self.conn, event)

    async def send(self, headers: list[tuple[str, str]], body: bytes) -> None:
        """Headers, then the body in frames the peer's window and frame size allow."""
        stream = self.reply.stream_id
        self.conn.initiate_connection()
        self.conn.send_headers(stream, headers, end_stream=not body)
        view, sent = memoryview(body), 0
        while sent < len(view) and not self.reply.ended:
            room = min(self.conn.local_flow_control_window(stream),
                       self.conn.max_outbound_frame_size, len(view) - sent)
            if room <= 0:
                await self.flush()
                await self.receive()
                continue
            last = sent + room == len(view)
            self.conn.send_data(stream, view[sent:sent + room].tobytes(), end_stream=last)
            sent += room
        await self.flush()

    async def finish(self) -> bytes:
        """Read the reply to its end; return its message."""
        while not self.reply.ended:
            await self.receive()
            await self.flush()
        self.conn.close_connection()
        self.writer.write(self.conn.data_to_send())
        return self.reply.message()

    async def run(self, headers: list[tuple[str, str]], body: bytes) -> bytes:
        """Send, then read the reply; every failure is one of our errors."""
        where = self.reply.where
        try:
            await self.send(headers, body)
            return await self.finish()
        except h2.exceptions.H2Error as exc:
            raise ServerError(f"{where} does not speak gRPC over HTTP/2 (h2c): {exc}") from exc
        except SeaweedDataError:
            raise
        except OSError as exc:  # a reset mid-call: the server may have acted on the request
            raise TransportError(f"connection to {where} lost during the gRPC call: "
                                 f"{exc.strerror or exc}") from exc


async def unary_call(host: str, port: int, path: str, request: bytes, *,
                     timeout: float = 2.0) -> bytes:
    """Make one unary gRPC call over h2c and return the serialized reply message.

    Everything (connect, exchange, close) finishes within about ``timeout`` seconds.
    Raises :class:`UnreachableError` when the port cannot be connected to (nothing was sent),
    :class:`RequestTimeoutError` when the server accepts but does not answer in time,
    :class:`TransportError` when the connection breaks mid-call, and :class:`ServerError` for
    anything that is not a successful gRPC reply.
    """
    host = host.strip("[]")
    where = authority(host, port)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    reader, writer = await _connect(host, port, where, timeout)
    call = _Call(reader, writer, _Reply(where=where, stream_id=1))
    headers = _request_headers(where, path, timeout)
    try:
        return await asyncio.wait_for(call.run(headers, grpc_frame(request)),
                                      max(deadline - loop.time(), 0.001))
    except asyncio.TimeoutError as exc:
        raise RequestTimeoutError(
            f"{where} accepted the connection but sent no gRPC reply within {timeout:g}s"
        ) from exc
    finally:
        await _close(writer, min(deadline - loop.time(), 0.5))


__all__ = ["MAX_REPLY_BYTES", "authority", "grpc_frame", "grpc_unframe", "unary_call"]
