"""Find the SeaweedFS master(s) behind a filer, without grpcio.

The filer answers ``filer_pb.SeaweedFiler/GetFilerConfiguration`` over gRPC with, among other
settings, the addresses of its masters. grpcio is not fork-safe and this package runs inside
PyTorch DataLoader workers, so this module speaks just enough gRPC itself: one unary call over
cleartext HTTP/2 with prior knowledge (h2c), driven by the pure-Python ``h2`` state machine on
asyncio streams, and a tiny reader of the protobuf wire format. A connection lives for one call
and is closed before the coroutine returns; nothing outlives it, so nothing crosses a fork.

Field numbers follow ``GetFilerConfigurationResponse`` in SeaweedFS's ``weed/pb/filer.proto``
(``repeated string masters = 1``, ...; see ``_CONFIG_FIELDS``).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from ..errors import RequestTimeoutError, ServerError, UnreachableError

log = logging.getLogger(__name__)

GRPC_PORT_OFFSET = 10000
GET_FILER_CONFIGURATION = "/filer_pb.SeaweedFiler/GetFilerConfiguration"
MAX_REPLY_BYTES = 4 * 1024 * 1024  # a filer configuration is a few hundred bytes
_READ_SIZE = 64 * 1024
_MASK64 = (1 << 64) - 1


def default_grpc_port(http_port: int) -> int:
    """The gRPC port SeaweedFS uses when none is configured: the HTTP port + 10000."""
    return http_port + GRPC_PORT_OFFSET


def master_http_url(address: str) -> str:
    """``host:port`` or ``host:port.grpcPort`` (SeaweedFS's ServerAddress) -> ``http://host:port``."""
    host, sep, ports = address.rpartition(":")
    if not sep or not host or not ports:
        raise ServerError(f"malformed master address from filer: {address!r}")
    http_port = ports.split(".", 1)[0]
    if not http_port.isdigit():
        raise ServerError(f"malformed master address from filer: {address!r}")
    return f"http://{host}:{http_port}"


# --------------------------------------------------------------------------- protobuf wire format


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode the base-128 varint at ``buf[pos:]``; return ``(value, next_pos)``."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ServerError("malformed protobuf: truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise ServerError("malformed protobuf: varint longer than 10 bytes")


def iter_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field_number, wire_type, value)`` for each field of an encoded message.

    Varints and fixed-width fields come out as ``int``, length-delimited ones as ``bytes``.
    Groups (wire types 3 and 4, deprecated) and truncated input raise :class:`ServerError`.
    """
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ServerError("malformed protobuf: field number 0")
        value: int | bytes
        if wire_type == 0:
            value, pos = read_varint(buf, pos)
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            if pos + width > len(buf):
                raise ServerError("malformed protobuf: truncated fixed-width field")
            value = int.from_bytes(buf[pos : pos + width], "little")
            pos += width
        elif wire_type == 2:
            length, pos = read_varint(buf, pos)
            if pos + length > len(buf):
                raise ServerError("malformed protobuf: truncated length-delimited field")
            value = bytes(buf[pos : pos + length])
            pos += length
        else:
            raise ServerError(f"malformed protobuf: unsupported wire type {wire_type}")
        yield number, wire_type, value


def _as_int32(value: int) -> int:
    """Reinterpret a decoded varint as a protobuf ``int32`` (negatives are sign-extended)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


@dataclass(frozen=True)
class FilerConfiguration:
    """What a filer says about itself in ``GetFilerConfiguration`` (proto3 defaults if absent)."""

    masters: tuple[str, ...] = ()
    replication: str = ""
    collection: str = ""
    max_mb: int = 0
    dir_buckets: str = ""
    cipher: bool = False
    signature: int = 0
    metrics_address: str = ""
    metrics_interval_sec: int = 0
    version: str = ""
    cluster_id: str = ""
    filer_group: str = ""
    major_version: int = 0
    minor_version: int = 0

    @property
    def master_urls(self) -> tuple[str, ...]:
        """The masters' HTTP URLs (``http://host:port``), in order, without duplicates."""
        return tuple(dict.fromkeys(master_http_url(m) for m in self.masters))


# field number -> (attribute, expected wire type, kind)
_CONFIG_FIELDS: dict[int, tuple[str, int, str]] = {
    1: ("masters", 2, "repeated_str"),
    2: ("replication", 2, "str"),
    3: ("collection", 2, "str"),
    4: ("max_mb", 0, "uint32"),
    5: ("dir_buckets", 2, "str"),
    7: ("cipher", 0, "bool"),
    8: ("signature", 0, "int32"),
    9: ("metrics_address", 2, "str"),
    10: ("metrics_interval_sec", 0, "int32"),
    11: ("version", 2, "str"),
    12: ("cluster_id", 2, "str"),
    13: ("filer_group", 2, "str"),
    14: ("major_version", 0, "int32"),
    15: ("minor_version", 0, "int32"),
}


def _convert(kind: str, value: int | bytes) -> Any:
    """Turn a raw field value into the Python value of a ``_CONFIG_FIELDS`` kind."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ServerError("malformed protobuf: string field is not UTF-8") from exc
    if kind == "bool":
        return value != 0
    if kind == "int32":
        return _as_int32(value)
    return value & 0xFFFFFFFF


def parse_filer_configuration(message: bytes) -> FilerConfiguration:
    """Decode a ``GetFilerConfigurationResponse``; unknown fields are skipped."""
    values: dict[str, Any] = {}
    masters: list[str] = []
    for number, wire_type, raw in iter_fields(message):
        spec = _CONFIG_FIELDS.get(number)
        if spec is None:
            continue
        name, expected_wire_type, kind = spec
        if wire_type != expected_wire_type:
            raise ServerError(f"malformed protobuf: field {name} has wire type {wire_type}")
        if kind == "repeated_str":
            masters.append(_convert(kind, raw))
        else:
            values[name] = _convert(kind, raw)
    return FilerConfiguration(masters=tuple(masters), **values)


# --------------------------------------------------------------------------- gRPC over h2c


def _authority(host: str, port: int) -> str:
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


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    reply: _Reply,
    headers: list[tuple[str, str]],
    request: bytes,
) -> bytes:
    """Send one unary request on a fresh HTTP/2 connection and read its reply to the end."""
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    conn.send_headers(reply.stream_id, headers)
    conn.send_data(reply.stream_id, grpc_frame(request), end_stream=True)
    try:
        while True:
            writer.write(conn.data_to_send())
            await writer.drain()
            if reply.ended:
                break
            chunk = await _read_chunk(reader, reply)
            for event in conn.receive_data(chunk):
                reply.handle(conn, event)
        conn.close_connection()
        writer.write(conn.data_to_send())
    except h2.exceptions.H2Error as exc:
        raise ServerError(f"{reply.where} does not speak gRPC over HTTP/2 (h2c): {exc}") from exc
    return reply.message()


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


async def unary_call(host: str, port: int, path: str, request: bytes, *,
                     timeout: float = 2.0) -> bytes:
    """Make one unary gRPC call over h2c and return the serialized reply message.

    Everything (connect, exchange, close) finishes within about ``timeout`` seconds.
    Raises :class:`UnreachableError` when the port cannot be connected to,
    :class:`RequestTimeoutError` when the server accepts but does not answer in time, and
    :class:`ServerError` for anything that is not a successful gRPC reply.
    """
    host = host.strip("[]")
    where = _authority(host, port)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    reader, writer = await _connect(host, port, where, timeout)
    reply = _Reply(where=where, stream_id=1)
    headers = _request_headers(where, path, timeout)
    try:
        exchange = _exchange(reader, writer, reply, headers, request)
        return await asyncio.wait_for(exchange, max(deadline - loop.time(), 0.001))
    except asyncio.TimeoutError as exc:
        raise RequestTimeoutError(
            f"{where} accepted the connection but sent no gRPC reply within {timeout:g}s"
        ) from exc
    finally:
        await _close(writer, min(deadline - loop.time(), 0.5))


# --------------------------------------------------------------------------- public API


async def get_filer_configuration(host: str, grpc_port: int, *,
                                  timeout: float = 2.0) -> FilerConfiguration:
    """Ask the filer at ``host:grpc_port`` for its configuration (masters, replication, ...)."""
    message = await unary_call(host, grpc_port, GET_FILER_CONFIGURATION, b"", timeout=timeout)
    try:
        return parse_filer_configuration(message)
    except ServerError as exc:
        raise ServerError(f"bad GetFilerConfiguration reply from "
                          f"{_authority(host.strip('[]'), grpc_port)}: {exc}") from exc


async def discover_masters(host: str, grpc_port: int, *, timeout: float = 2.0) -> list[str]:
    """The HTTP URLs of the masters the filer at ``host:grpc_port`` uses, e.g.
    ``["http://127.0.0.1:9333"]``, in the filer's order without duplicates."""
    config = await get_filer_configuration(host, grpc_port, timeout=timeout)
    if not config.master_urls:
        where = _authority(host.strip("[]"), grpc_port)
        raise ServerError(f"filer at {where} reported no masters")
    log.debug("filer %s:%d reports masters %s", host, grpc_port, config.master_urls)
    return list(config.master_urls)


__all__ = [
    "GET_FILER_CONFIGURATION", "FilerConfiguration", "default_grpc_port", "discover_masters",
    "get_filer_configuration", "grpc_frame", "grpc_unframe", "iter_fields", "master_http_url",
    "parse_filer_configuration", "read_varint", "unary_call",
]
