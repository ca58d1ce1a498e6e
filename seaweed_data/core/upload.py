"""Parallel, atomic uploads of large files: chunks straight to the volume servers, one entry.

The data is cut into chunks of ``chunk_bytes``. Each chunk gets a file id from the master
(``/dir/assign``, with the JWT it hands out for that id; with the volume write key of
``security.toml`` we sign our own) and is stored on its volume server
with ``PUT http://<volume>/<fid>`` (raw body), several at once, with retries; the volume
server's answer must confirm the size and the CRC-32C (its ``eTag``) of what it stored. Only
when every chunk is stored is the file created, in one step: a ``CreateEntry`` call on the
filer's gRPC port carrying the whole chunk list (the filer creates missing parent directories,
and deletes the chunks of the entry it replaces). Until then nothing is visible under the
path, and an older file there stays intact; a process killed midway leaves at most
unreferenced chunks on the volume servers. A failed upload deletes the chunks it stored (best
effort) and raises an error naming the path.

Without a known master, or when the filer's gRPC port does not answer, the data goes through
the filer's HTTP API instead (``fallback``): one streaming ``PUT``, which the filer also turns
into an entry only after the whole body arrived.

Replication and collection default to the filer's own settings (``GetFilerConfiguration``);
per-path rules of the filer's ``filer.conf`` are not applied to chunks uploaded this way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from ..config import MiB
from ..errors import (
    ConfigError,
    CorruptDataError,
    IsDirectoryError,
    NotDirectoryError,
    PermissionDeniedError,
    SeaweedDataError,
    ServerError,
    TransportError,
    UnreachableError,
)
from .discovery import FilerConfiguration, get_filer_configuration
from .entry import Entry
from .filer_grpc import CommitUnknownError, commit, filer_grpc_address
from .http import Response, where
from .loop import LOOP
from .protowrite import StoredChunk
from .records import crc32c
from .security import VOLUME_WRITE

if TYPE_CHECKING:
    from .aclient import AsyncClient
    from .client import Client

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 8 * MiB
DEFAULT_CONCURRENCY = 8
MAX_CHUNK_BYTES = 256 * MiB  # a volume server's default -fileSizeLimitMB
Data = bytes | bytearray | memoryview | IO[bytes]
Piece = bytes | memoryview
_CLEANUPS: set[asyncio.Task[int]] = set()  # orphan deletions outliving a cancelled upload


@dataclass(frozen=True)
class UploadOptions:
    """How :func:`upload` stores a file. Validated on creation."""

    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    """Bytes per chunk (needle); the last one may be shorter."""
    concurrency: int = DEFAULT_CONCURRENCY
    """Chunks uploaded at once (bounds the memory a file source is read into, too)."""
    mime: str = "application/octet-stream"
    replication: str | None = None
    """SeaweedFS replication (``"000"``, ``"010"``, ...); default: the filer's, else the
    master's."""
    collection: str | None = None
    """Collection of the chunks; default: the filer's."""
    fallback: bool = True
    """Upload through the filer's HTTP API when the direct path is not available."""

    def __post_init__(self) -> None:
        if not 0 < self.chunk_bytes <= MAX_CHUNK_BYTES:
            raise ConfigError(f"chunk_bytes must be in 1..{MAX_CHUNK_BYTES}, "
                              f"got {self.chunk_bytes!r}")
        if self.concurrency <= 0:
            raise ConfigError(f"concurrency must be > 0, got {self.concurrency!r}")


@dataclass(frozen=True)
class Assignment:
    """A file id from the master, where to store it, and the JWT allowing it (if any)."""

    fid: str
    url: str
    auth: str | None = field(default=None, repr=False)
    """``Bearer <token>`` from the master (a credential: kept out of reprs)."""

    @property
    def target(self) -> str:
        return f"http://{self.url}/{self.fid}"


class _Source:
    """The data's pieces in order: slices of a buffer (no copy), or reads of a file."""

    def __init__(self, data: Data, chunk_bytes: int) -> None:
        self._view: memoryview | None = None
        self._file: IO[bytes] | None = None
        if isinstance(data, (bytes, bytearray, memoryview)):
            self._view = memoryview(data).cast("B")
        else:
            self._file = data
        self._chunk_bytes = chunk_bytes
        self._lock = asyncio.Lock()
        self.size = 0
        """Bytes handed out so far: the file size once every piece was taken."""

    async def next(self) -> tuple[int, Piece] | None:
        """``(offset, piece)`` of the next chunk; None at the end."""
        async with self._lock:
            offset = self.size
            piece: Piece
            if self._view is not None:
                piece = self._view[offset:offset + self._chunk_bytes]
            else:
                assert self._file is not None
                piece = await asyncio.to_thread(self._file.read, self._chunk_bytes)
            if not len(piece):
                return None
            self.size += len(piece)
            return offset, piece


def needle_etag(piece: Piece) -> str:
    """The eTag a volume server gives a needle: its CRC-32C as 8 hex digits.

    Hardware CRC at many GB/s (an MD5 would cost ~20x more), so checking every chunk is
    nearly free."""
    return f"{crc32c(piece):08x}"


class ChunkUploader:
    """Stores the pieces of one file on volume servers and remembers what it stored."""

    def __init__(self, client: AsyncClient, path: str, masters: list[str],
                 options: UploadOptions, filer_config: FilerConfiguration) -> None:
        self.client = client
        self.path = path
        self.masters = masters
        self.options = options
        self.params = {"count": "1"}
        replication = options.replication or filer_config.replication
        collection = options.collection or filer_config.collection
        if replication:
            self.params["replication"] = replication
        if collection:
            self.params["collection"] = collection
        self.stored: list[StoredChunk] = []
        self.sent: list[Assignment] = []
        """Every file id a PUT was started for: what a failure must clean up."""

    async def run(self, source: _Source) -> list[StoredChunk]:
        """Upload every piece, ``concurrency`` at once; chunks sorted by offset."""
        workers = [asyncio.ensure_future(self._worker(source))
                   for _ in range(self.options.concurrency)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        return sorted(self.stored, key=lambda chunk: chunk.offset)

    async def _worker(self, source: _Source) -> None:
        while (item := await source.next()) is not None:
            offset, piece = item
            etag = needle_etag(piece)
            assignment = await self.assign()
            self.sent.append(assignment)
            await self.put(assignment, piece, etag, offset)
            self.stored.append(StoredChunk(assignment.fid, offset, len(piece),
                                           time.time_ns(), etag))
            self.client.counters.add("upload_chunks")
            self.client.counters.add("bytes_uploaded", len(piece))

    async def assign(self) -> Assignment:
        """A fresh file id from the first master that gives one."""
        error: SeaweedDataError | None = None
        for master in self.masters:
            try:
                response = await self.client.http.request(
                    "GET", f"{master}/dir/assign", kind="master", params=self.params)
            except TransportError as exc:
                error = exc
                continue
            body = _json_object(response)
            if response.status == 200 and body.get("fid") and body.get("url"):
                auth = response.headers.get("Authorization") or body.get("auth")
                return Assignment(str(body["fid"]), str(body["url"]), _bearer(auth))
            detail = body.get("error") or response.body[:200].decode("utf-8", "replace")
            error = ServerError(f"master {where(master)} gave no file id for {self.path!r}: "
                                f"HTTP {response.status} {detail}".rstrip(), response.status)
        if error is None:
            raise ServerError(f"no master known to upload {self.path!r}")
        raise error

    def auth(self, assignment: Assignment) -> dict[str, str]:
        """The ``Authorization`` header for writing (or deleting) the assigned needle: a fresh
        token signed with our volume write key, else the master's."""
        token = self.client.http.tokens.header(VOLUME_WRITE, assignment.fid) or assignment.auth
        return {"Authorization": token} if token else {}

    def _refused(self, assignment: Assignment, status: int) -> PermissionDeniedError:
        tokens = self.client.http.tokens
        why = tokens.denial(VOLUME_WRITE)
        if assignment.auth and not tokens.has(VOLUME_WRITE):
            why = "it rejected the write token the master handed out (do they share a key?)"
        return PermissionDeniedError(
            f"volume server refused to store a chunk of {self.path!r} (HTTP {status}): {why}")

    async def put(self, assignment: Assignment, piece: Piece, etag: str, offset: int) -> None:
        """Store one piece under its file id and check what the volume server says."""
        headers = {"Content-Type": "application/octet-stream", **self.auth(assignment)}
        response = await self.client.http.request("PUT", assignment.target, kind="volume",
                                                  data=piece, headers=headers)
        status = response.status
        if status in (401, 403):
            raise self._refused(assignment, status)
        if status not in (201, 204):
            text = response.body[:200].decode("utf-8", "replace").strip()
            raise ServerError(f"volume server {where(assignment.target)} failed to store a "
                              f"chunk of {self.path!r}: HTTP {status} {text}".rstrip(), status)
        stored = _json_object(response).get("size", len(piece)) if status == 201 else len(piece)
        echoed = response.headers.get("ETag", "").strip('"')
        if stored != len(piece) or echoed != etag:
            raise CorruptDataError(
                f"volume server stored {stored} bytes (CRC {echoed or '?'}) of the "
                f"{len(piece)}-byte chunk at offset {offset} of {self.path!r} (CRC {etag})",
                self.path, offset)

    async def delete_orphans(self) -> int:
        """Delete every chunk a PUT was started for; return how many were deleted."""
        if not self.sent:
            return 0

        async def delete(assignment: Assignment) -> bool:
            try:
                response = await self.client.http.request(
                    "DELETE", assignment.target, kind="volume", retries=1,
                    headers=self.auth(assignment))
            except TransportError:
                return False
            return response.status in (200, 202, 204)

        results = await asyncio.gather(*(delete(a) for a in self.sent))
        deleted = sum(results)
        self.client.counters.add("upload_chunks_deleted", deleted)
        if deleted < len(results):
            log.warning("upload of %s failed; %d of its %d chunks could not be deleted (or "
                        "never arrived)", self.path, len(results) - deleted, len(results))
        return deleted


def _bearer(token: object) -> str | None:
    """An ``Authorization`` value from the master's header or JSON ``auth`` field."""
    if not isinstance(token, str) or not token:
        return None
    return token if token[:7].lower() == "bearer " else f"Bearer {token}"


def _json_object(response: Response) -> dict[str, object]:
    try:
        body = json.loads(response.body or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# --------------------------------------------------------------------------- the upload


async def _direct_path(client: AsyncClient) -> tuple[list[str], FilerConfiguration] | None:
    """Masters and filer settings when chunks can go straight to volume servers, else None."""
    masters = await client.masters()
    if not masters:
        return None
    host, port = filer_grpc_address(client)
    try:
        settings = await get_filer_configuration(host, port,
                                                 timeout=client.config.connect_timeout)
    except SeaweedDataError as exc:
        log.info("filer gRPC port %s:%d unusable (%s)", host, port, exc)
        return None
    return masters, settings


async def upload(client: AsyncClient, path: str, data: Data,
                 options: UploadOptions | None = None) -> Entry:
    """Store ``data`` (a buffer, or a binary file read from its current position) at the
    filer path ``path``, atomically: readers see the old file or the new one, never a part.
    Returns the new entry. Runs on the loop thread."""
    options = options or UploadOptions()
    client.forget(path)
    direct = await _direct_path(client)
    if direct is None:
        if not options.fallback:
            raise UnreachableError(f"cannot upload {path!r}: no master known or the filer's "
                                   f"gRPC port {filer_grpc_address(client)[1]} does not answer")
        await upload_through_filer(client, path, data, options)
    else:
        await _upload_direct(client, path, data, options, *direct)
    client.forget(path)
    return await client.stat(path, fresh=True)


async def _upload_direct(client: AsyncClient, path: str, data: Data, options: UploadOptions,
                         masters: list[str], settings: FilerConfiguration) -> None:
    uploader = ChunkUploader(client, path, masters, options, settings)
    source = _Source(data, options.chunk_bytes)
    try:
        chunks = await uploader.run(source)
        await commit(client, path, chunks, source.size, options.mime)
    except asyncio.CancelledError:
        cleanup = asyncio.ensure_future(uploader.delete_orphans())
        _CLEANUPS.add(cleanup)
        cleanup.add_done_callback(_CLEANUPS.discard)
        raise
    except Exception as exc:
        if not isinstance(exc, CommitUnknownError):
            await uploader.delete_orphans()
        named = with_path(exc, path)
        if named is exc:
            raise
        raise named from exc


async def upload_through_filer(client: AsyncClient, path: str, data: Data,
                               options: UploadOptions) -> None:
    """One streaming ``PUT`` through the filer (which chunks it by its ``-maxMB``).

    A file source cannot be rewound for a retry, so it gets one try."""
    client.counters.add("upload_fallbacks")
    body = memoryview(data).cast("B") if isinstance(
        data, (bytes, bytearray, memoryview)) else data
    retries = 0 if not isinstance(body, memoryview) else None
    try:
        response = await client.http.request(
            "PUT", client.filer.url(path), kind="filer", data=body, retries=retries,
            headers={"Content-Type": options.mime, **client.filer.auth("PUT")})
    except TransportError as exc:
        raise with_path(exc, path) from exc  # Http's errors name the URL, not the path
    client.filer.check(response, "PUT", "writing", path)
    if isinstance(body, memoryview):
        client.counters.add("bytes_uploaded", len(body))


def with_path(exc: Exception, path: str) -> Exception:
    """``exc`` as an error of the same kind whose message names ``path``."""
    message = str(exc)
    if repr(path) in message and isinstance(exc, SeaweedDataError):
        return exc
    message = f"upload of {path!r} failed: {message}"
    if isinstance(exc, ServerError):
        return ServerError(message, exc.status)
    if isinstance(exc, CorruptDataError):
        return CorruptDataError(message, path, exc.offset)
    if isinstance(exc, (TransportError, PermissionDeniedError, IsDirectoryError,
                        NotDirectoryError)):
        try:
            return type(exc)(message)
        except TypeError:  # a subclass with its own constructor
            return SeaweedDataError(message)
    return SeaweedDataError(message)


# --------------------------------------------------------------------------- sync bridges


def write_file(client: Client, location: str, data: Data,
               options: UploadOptions | None = None) -> Entry:
    """:func:`upload` from a synchronous :class:`~seaweed_data.Client` (blocks until done)."""
    core = client._async()
    return LOOP.run(upload(core, client.path(location), data, options))


def start_write(client: Client, location: str, data: Data,
                options: UploadOptions | None = None) -> concurrent.futures.Future[Entry]:
    """:func:`upload` started on the loop thread; the future holds the entry or the error.
    ``data`` must not change until the future is done."""
    core = client._async()
    return LOOP.submit(upload(core, client.path(location), data, options))
