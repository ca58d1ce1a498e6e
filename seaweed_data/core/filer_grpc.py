"""Unary gRPC calls to the filer whose requests may be large (``CreateEntry`` with its chunks).

:func:`.discovery.unary_call` sends its request as one HTTP/2 DATA frame, which caps it at the
16 KiB default frame size: enough for ``GetFilerConfiguration``, not for the chunk list of a
multi-gigabyte file (~110 bytes a chunk). :func:`large_unary_call` sends the request in frames
no larger than the peer allows, waiting for ``WINDOW_UPDATE`` when the flow-control window is
spent; otherwise it is the same one-connection-per-call h2c exchange, with the same errors.

:func:`commit` creates a file from chunks already stored on volume servers, in one call.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.exceptions

from ..errors import (
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    RequestTimeoutError,
    SeaweedDataError,
    ServerError,
    UnreachableError,
)
from .discovery import (
    _authority,
    _close,
    _connect,
    _read_chunk,
    _Reply,
    _request_headers,
    default_grpc_port,
    grpc_frame,
)
from .location import parent_and_name
from .protowrite import FileAttributes, StoredChunk, create_entry_error, create_entry_request

if TYPE_CHECKING:
    from .aclient import AsyncClient

CREATE_ENTRY = "/filer_pb.SeaweedFiler/CreateEntry"


class CommitUnknownError(ServerError):
    """``CreateEntry`` got no answer and the filer cannot be asked: the file may exist, so
    its chunks must not be deleted."""


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


def filer_grpc_address(client: AsyncClient) -> tuple[str, int]:
    """Host and gRPC port of the client's filer (configured, else HTTP port + 10000)."""
    parts = urlsplit(client.filer.base)
    port = client.config.filer_grpc_port or default_grpc_port(parts.port or 80)
    return parts.hostname or "127.0.0.1", port


async def commit(client: AsyncClient, path: str, chunks: list[StoredChunk], size: int,
                 mime: str) -> None:
    """Create (or replace) the entry at ``path`` listing ``chunks``, in one filer call."""
    directory, name = parent_and_name(path)
    attributes = FileAttributes(size, time.time_ns(), mime=mime)
    request = create_entry_request(directory, name, chunks, attributes)
    host, port = filer_grpc_address(client)
    try:
        error = await create_entry(host, port, request, timeout=client.config.read_timeout)
    except UnreachableError:
        raise  # nothing was sent
    except SeaweedDataError as exc:
        created = await _was_created(client, path, chunks[0]) if chunks else False
        if created:
            return  # the reply got lost, not the entry
        if created is None:
            raise CommitUnknownError(f"cannot tell whether {path!r} was created: {exc}; "
                                     "its chunks are kept") from exc
        raise
    if not error:
        return
    if "is a directory" in error:
        raise IsDirectoryError(f"cannot write {path!r}: {error}")
    if "is a file" in error or "not a directory" in error:
        raise NotDirectoryError(f"cannot write {path!r}: {error}")
    raise ServerError(f"filer refused to create {path!r}: {error}")


async def _was_created(client: AsyncClient, path: str, first: StoredChunk) -> bool | None:
    """After a lost reply: does the entry at ``path`` hold our first chunk? None: unknown."""
    try:
        entry = await client.filer.entry(path, resolve_manifest=True)
    except NotFoundError:
        return False
    except SeaweedDataError:
        return None
    return any(chunk.file_id == first.file_id for chunk in entry.chunks)
