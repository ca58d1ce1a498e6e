"""Checkpoints on SeaweedFS: ``save`` (atomic, parallel, optionally in the background) and
``load`` (parallel reads).

``save`` serializes with :func:`torch.save` before it returns, into memory (or, past
:data:`SPOOL_BYTES`, a temporary file), so tensors may change as soon as it returns. The bytes
then go to the volume servers in chunks, several at once, and the file appears under its name
in one step when every chunk is stored (see :mod:`seaweed_data.core.upload`): a process killed
mid-save leaves the previous checkpoint at that path intact. ``background=True`` returns a
:class:`SaveHandle` at once and uploads while training goes on; pending background saves are
waited for at interpreter exit.

``load`` fetches the file's chunks in parallel straight from the volume servers, bypassing the
read cache (a checkpoint is read once), and :func:`torch.load`\\ s it from memory.

Locations are as everywhere: ``seaweedfs://host:port/path``, ``http://host:port/path`` or a
bare ``/path`` on ``SEAWEED_FILER``. Pass ``client=`` to reuse a client; otherwise one is made
for the location's filer and closed afterwards.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import io
import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, Literal, cast, overload

import torch

from ..config import Config, GiB
from ..core.client import Client
from ..core.entry import Entry
from ..core.location import parse_location
from ..core.upload import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_CONCURRENCY,
    Data,
    UploadOptions,
    start_write,
    write_file,
)

log = logging.getLogger(__name__)

SPOOL_BYTES = 4 * GiB
"""Serialized checkpoints larger than this are spooled to a temporary file, not memory."""
MIME = "application/octet-stream"
MapLocation = Callable[..., Any] | torch.device | str | dict[str, str] | None


class _Spool(io.RawIOBase):
    """Where :func:`torch.save` writes: memory, moved to a temporary file past ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit
        self._memory: io.BytesIO | None = io.BytesIO()
        self._file: IO[bytes] | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self._memory is not None and self._memory.tell() + view.nbytes > self._limit:
            self._file = tempfile.TemporaryFile(prefix="seaweed-checkpoint-")  # noqa: SIM115
            self._file.write(self._memory.getbuffer())
            self._memory = None
        target = self._memory if self._memory is not None else self._file
        assert target is not None
        return target.write(view)

    def contents(self) -> Data:
        """The serialized bytes: a view of the memory, or the file rewound."""
        if self._memory is not None:
            return self._memory.getbuffer()
        assert self._file is not None
        self._file.flush()
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._memory = None  # the exported view, if any, keeps the buffer alive
        super().close()


def serialize(obj: object, limit: int | None = None) -> _Spool:
    """``torch.save(obj)`` into a spool (memory up to ``limit`` bytes, then a file)."""
    spool = _Spool(SPOOL_BYTES if limit is None else limit)
    try:
        torch.save(obj, cast(IO[bytes], spool))
    except BaseException:
        spool.close()
        raise
    return spool


@contextmanager
def _client_for(location: str, client: Client | None,
                config: Config | None) -> Iterator[tuple[Client, str]]:
    """The client to use and the filer path; a client made here is closed afterwards."""
    if client is not None:
        yield client, client.path(location)
        return
    parsed = parse_location(location)
    with Client(parsed.filer, config) as owned:
        yield owned, parsed.path


class SaveHandle:
    """A checkpoint being uploaded in the background (writeback).

    :meth:`wait` blocks until it is stored and returns its entry, or raises the upload's
    error; :meth:`done` says whether it finished. The upload goes on whether or not anyone
    waits, and interpreter exit waits for it. Once it finished, the serialized bytes are
    freed (and a client made for this save is closed).
    """

    def __init__(self, path: str, future: concurrent.futures.Future[Entry],
                 release: Callable[[], None]) -> None:
        self.path = path
        self._future = future
        self._release = release
        self._released = threading.Event()
        _PENDING.add(self)
        future.add_done_callback(self._finished)

    def __repr__(self) -> str:
        state = "done" if self.done() else "uploading"
        return f"SaveHandle({self.path!r}, {state})"

    def done(self) -> bool:
        """True once the upload succeeded or failed."""
        return self._future.done()

    def wait(self, timeout: float | None = None) -> Entry:
        """The stored checkpoint's entry; re-raises the upload's error. A ``timeout`` that
        passes raises :class:`TimeoutError` (the upload goes on)."""
        try:
            return self._future.result(timeout)
        finally:
            if self._future.done():
                self._released.wait()

    def _finished(self, future: concurrent.futures.Future[Entry]) -> None:
        # Runs on the loop thread, which must not close a client itself.
        threading.Thread(target=self._release_once, name="seaweed_data-save-release",
                         daemon=True).start()

    def _release_once(self) -> None:
        try:
            self._release()
        finally:
            self._released.set()
            _PENDING.discard(self)


_PENDING: set[SaveHandle] = set()


@atexit.register
def _wait_for_pending_saves() -> None:
    """At exit, finish background saves (otherwise they would die with the loop thread)."""
    for handle in list(_PENDING):
        try:
            handle.wait()
        except Exception as exc:  # nothing left to raise it to
            log.error("background save of %s failed: %s", handle.path, exc)


@overload
def save(obj: object, path: str, *, client: Client | None = None,
         config: Config | None = None, background: Literal[False] = False,
         chunk_bytes: int = DEFAULT_CHUNK_BYTES,
         concurrency: int = DEFAULT_CONCURRENCY) -> Entry: ...
@overload
def save(obj: object, path: str, *, client: Client | None = None,
         config: Config | None = None, background: Literal[True],
         chunk_bytes: int = DEFAULT_CHUNK_BYTES,
         concurrency: int = DEFAULT_CONCURRENCY) -> SaveHandle: ...


def save(obj: object, path: str, *, client: Client | None = None,
         config: Config | None = None, background: bool = False,
         chunk_bytes: int = DEFAULT_CHUNK_BYTES,
         concurrency: int = DEFAULT_CONCURRENCY) -> Entry | SaveHandle:
    """:func:`torch.save` ``obj`` to ``path`` on SeaweedFS, atomically.

    Returns the stored file's :class:`~seaweed_data.Entry`, or with ``background=True`` a
    :class:`SaveHandle` as soon as ``obj`` is serialized. ``chunk_bytes`` and
    ``concurrency`` shape the parallel upload. Errors name the path.
    """
    options = UploadOptions(chunk_bytes=chunk_bytes, concurrency=concurrency, mime=MIME)
    if client is None:
        parse_location(path)  # a bad location fails before the work of serializing
    else:
        client.path(path)
    spool = serialize(obj)
    if not background:
        try:
            with _client_for(path, client, config) as (used, _):
                return write_file(used, path, spool.contents(), options)
        finally:
            spool.close()
    return _save_in_background(spool, path, client, config, options)


def _save_in_background(spool: _Spool, path: str, client: Client | None,
                        config: Config | None, options: UploadOptions) -> SaveHandle:
    owned = None
    if client is None:
        parsed = parse_location(path)
        client = owned = Client(parsed.filer, config)

    def release() -> None:
        spool.close()
        if owned is not None:
            owned.close()

    try:
        future = start_write(client, path, spool.contents(), options)
    except BaseException:
        release()
        raise
    return SaveHandle(path, future, release)


def load(path: str, map_location: MapLocation = None, weights_only: bool = True, *,
         client: Client | None = None, config: Config | None = None) -> Any:
    """:func:`torch.load` the checkpoint at ``path``, its chunks fetched in parallel straight
    from the volume servers (not kept in the client's read cache).

    ``map_location`` and ``weights_only`` mean what they mean to :func:`torch.load`;
    a missing path raises :class:`~seaweed_data.NotFoundError`.
    """
    with _client_for(path, client, config) as (used, filer_path):
        data = read_whole(used, filer_path)
    return torch.load(io.BytesIO(data), map_location=map_location,
                      weights_only=weights_only)


def read_whole(client: Client, path: str) -> bytes:
    """Every byte of the file at ``path``: one ``readall`` of an open file fetches all its
    chunks in parallel (``Config.chunk_concurrency`` at once), bypassing the read cache.

    Splitting chunks further into parallel ranged reads did not pay on loopback: a 512 MiB
    file of eight 64 MiB chunks read as fast whole as in 4 MiB or 16 MiB ranges."""
    with client.open(path, "rb") as file:
        return file.read()
