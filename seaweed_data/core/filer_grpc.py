"""Commit an upload: ``CreateEntry`` on the filer's gRPC port, listing chunks already stored.

:func:`commit` creates (or replaces) a file from chunks already on volume servers in one call;
a lost reply is resolved by asking the filer whether the entry now holds our chunks.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..errors import (
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    SeaweedDataError,
    ServerError,
    UnreachableError,
)
from .discovery import default_grpc_port
from .grpc import unary_call
from .location import parent_and_name
from .protowrite import FileAttributes, StoredChunk, create_entry_error, create_entry_request

if TYPE_CHECKING:
    from .aclient import AsyncClient

CREATE_ENTRY = "/filer_pb.SeaweedFiler/CreateEntry"


class CommitUnknownError(ServerError):
    """``CreateEntry`` got no answer and the filer cannot be asked: the file may exist, so
    its chunks must not be deleted."""


async def create_entry(host: str, port: int, request: bytes, *, timeout: float) -> str:
    """Send a serialized ``CreateEntryRequest``; return the reply's ``error`` ("" = created)."""
    reply = await unary_call(host, port, CREATE_ENTRY, request, timeout=timeout)
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
