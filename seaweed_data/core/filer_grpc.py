"""Unary gRPC calls to the filer whose requests may be large (``CreateEntry`` with its chunks).

:func:`.discovery.unary_call` sends its request as one HTTP/2 DATA frame, which caps it at the
16 KiB default frame size: enough for ``GetFilerConfiguration``, not for the chunk list of a
multi-gigabyte file (~110 bytes a chunk). :func:`large_unary_call` sends the request in frames
no larger than the peer allows, waiting for ``WINDOW_UPDATE`` when the flow-control window is
spent; otherwise it is the same one-connection-per-call h2c exchange, with the same errors.
"""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.exceptions

from ..errors import RequestTimeoutError, ServerError
from .discovery import (
    _authority,
    _close,
    _connect,
    _read_chunk,
    _Reply,
    _request_headers,
    grpc_frame,
)
from .protowrite import create_entry_error

CREATE_ENTRY = "/filer_pb.SeaweedFiler/CreateEntry"


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
        self.conn.send_headers(stream, headers)
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


async def large_unary_call(host: str, port: int, path: str, request: bytes, *,
                           timeout: float) -> bytes:
    """:func:`.discovery.unary_call` for requests of any size; same errors and deadline."""
    host = host.strip("[]")
    where = _authority(host, port)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    reader, writer = await _connect(host, port, where, timeout)
    call = _Call(reader, writer, _Reply(where=where, stream_id=1))

    async def exchange() -> bytes:
        try:
            await call.send(_request_headers(where, path, timeout), grpc_frame(request))
            return await call.finish()
        except h2.exceptions.H2Error as exc:
            raise ServerError(f"{where} does not speak gRPC over HTTP/2 (h2c): {exc}") from exc

    try:
        return await asyncio.wait_for(exchange(), max(deadline - loop.time(), 0.001))
    except asyncio.TimeoutError as exc:
        raise RequestTimeoutError(
            f"{where} accepted the connection but sent no gRPC reply within {timeout:g}s"
        ) from exc
    finally:
        await _close(writer, min(deadline - loop.time(), 0.5))


async def create_entry(host: str, port: int, request: bytes, *, timeout: float) -> str:
    """Send a serialized ``CreateEntryRequest``; return the reply's ``error`` ("" = created)."""
    reply = await large_unary_call(host, port, CREATE_ENTRY, request, timeout=timeout)
    return create_entry_error(reply)
