"""``sd.Client``: the synchronous facade over :class:`AsyncClient` on the loop thread.

Fork and spawn: the client keeps only its filer and config when pickled. In a forked child
the first call notices the new pid, drops the parent's session without touching its sockets
(closing their inherited copies), and builds a fresh core on the child's own loop thread.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import io
import os
import sys
import threading
import time
import weakref
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar, cast, overload

from ..config import Config
from ..errors import InvalidLocationError
from .aclient import AsyncClient
from .entry import Entry
from .files import AtomicWriter
from .location import Location, default_filer, is_normal_path, normalize_filer, parse_location
from .loop import LOOP
from .metrics import PROCESS, Counters
from .readahead import ReadaheadReader

T = TypeVar("T")
READ_BUFFER_BYTES = 1 << 20


class Client:
    """Read and write files of one SeaweedFS filer.

    >>> c = Client("http://127.0.0.1:8888")                     # doctest: +SKIP
    >>> c.write("/data/a.bin", b"hello"); c.read("/data/a.bin")  # doctest: +SKIP
    b'hello'

    ``filer`` defaults to ``SEAWEED_FILER`` (else ``http://127.0.0.1:8888``) and ``config``
    to ``Config.from_env()``. Paths are bare (``/a/b``) or full locations on the same filer
    (``seaweedfs://host:port/a/b``, ``http://host:port/a/b``). No I/O happens until the first
    call. Use it as a context manager or call :meth:`close`; one left open is closed when the
    interpreter exits.
    """

    def __init__(self, filer: str | None = None, config: Config | None = None, *,
                 counters: Counters | None = None) -> None:
        self.filer = normalize_filer(filer) if filer else default_filer()
        self.config = config if config is not None else Config.from_env()
        # Counts go to this client, to ``counters`` (e.g. a dataset's) and to the process.
        self.counters = Counters(parent=counters or PROCESS)
        self._core: AsyncClient | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"Client({self.filer!r})"

    # -- plumbing ------------------------------------------------------------------------------

    def _async(self) -> AsyncClient:
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    self._start(pid)
        assert self._core is not None
        return self._core

    def _start(self, pid: int) -> None:
        if self._core is not None:  # inherited through fork: never touch the parent's loop
            self._core.http.abandon_after_fork()
            self.counters._after_fork()
        LOOP.acquire()
        self._core = AsyncClient(self.filer, self.config, self.counters)
        self._pid = pid
        _OPEN.add(self)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        self._report_late_hits()
        return LOOP.run(coro)

    def _report_late_hits(self) -> None:
        """Report the cache hits :meth:`read_entries` held back before anything else
        reaches the loop thread (the order of the reads is what moves the hints)."""
        core = self._core
        if core is None:
            return
        hits = core.items.late_hits()
        if hits:
            LOOP.post(core.items.consumed_all, hits, False)

    def path(self, location: str) -> str:
        """The filer path of ``location``; refuses locations on another filer."""
        if is_normal_path(location):  # the common case (a listing's paths), made cheap
            return location
        parsed: Location = parse_location(location, self.filer)
        if parsed.filer != self.filer:
            raise InvalidLocationError(
                f"{location!r} is on filer {parsed.filer}, this client reads {self.filer}")
        return parsed.path

    # -- reading -------------------------------------------------------------------------------

    def read(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of a file from ``offset``; ``length`` None reads to the end."""
        core = self._async()
        return self._run(core.read(self.path(path), offset, length))

    def read_many(self, paths: list[str]) -> list[bytes]:
        """Whole files, fetched concurrently, in the order given."""
        core = self._async()
        return self._run(core.read_many([self.path(p) for p in paths]))

    def read_ranges(self, path: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Many ``(offset, length)`` ranges of one file; near ranges share one request."""
        core = self._async()
        return self._run(core.read_ranges(self.path(path), ranges))

    # -- the future ----------------------------------------------------------------------------

    def set_hints(self, paths: Sequence[str], next_paths: Sequence[str] = (),
                  known: Mapping[str, Entry] | None = None, *,
                  prefetch_next: bool = True, background: bool = False) -> None:
        """Announce the exact order of the coming whole-file reads (and, when known, of the
        next epoch's). It drives prefetching and the ``"future"`` eviction policy; replacing
        the hints (a new epoch, a resume) cancels prefetches that are no longer ahead.

        ``background=True`` returns at once: the paths are read and the hints applied on the
        loop thread (a lazy sequence keeps that work off the caller), when ``known`` has the
        entry of every path before any later call of this client, else once their metadata
        is in. A failure (metadata, a location on another filer) is then logged: the reads
        go on unhinted.
        """
        core = self._async()
        known = known or {}
        if background:
            self._report_late_hits()
            core.items.expect_reads()  # the reads from now on move these hints
            LOOP.post(self._hint_soon, core, paths, next_paths, known, prefetch_next)
        else:
            self._run(core.set_hints(self._filer_paths(paths, known),
                                     self._filer_paths(next_paths, known), known,
                                     prefetch_next=prefetch_next))

    def _hint_soon(self, core: AsyncClient, paths: Sequence[str], next_paths: Sequence[str],
                   known: Mapping[str, Entry], prefetch_next: bool) -> None:
        """:meth:`set_hints` with ``background=True``, on the loop thread."""
        core.items.hint_soon(self._filer_paths(paths, known),
                             self._filer_paths(next_paths, known), known,
                             prefetch_next=prefetch_next)

    def _filer_paths(self, paths: Sequence[str], known: Mapping[str, Entry]) -> list[str]:
        # A path that is a key of ``known`` is a filer path (an entry's) already.
        return [p if p in known else self.path(p) for p in paths]

    def read_entries(self, entries: Sequence[Entry]) -> list[bytes]:
        """Whole files of entries you already have (a listing), concurrently, in order.

        Cache hits are read right here, in the calling thread, up to the first miss; when all
        are hits the loop thread is told about them without waiting: at once while prefetches
        are under way, else a few hundred at a time and before anything else this client
        sends it (see :meth:`ItemReads.hits_to_report`)."""
        core = self._async()
        entries = list(entries)
        # Hits up to the first miss: the loop thread takes it from there.
        found: list[bytes | None] = list(core.items.peek_leading(entries))
        if len(found) == len(entries):
            hits, refill = core.items.hits_to_report([entry.path for entry in entries])
            if hits:
                LOOP.post(core.items.consumed_all, hits, refill)
            return cast(list[bytes], found)
        found += [None] * (len(entries) - len(found))
        return self._run(core.read_entries(entries, found))

    def read_cached(self, disk_keys: Sequence[bytes]) -> list[bytes]:
        """Whole files by their disk-tier index keys (:func:`~.items.disk_keys`), read in the
        calling thread, in order up to the first one the disk tier lacks; nothing unless
        this client expects no reads and holds nothing in memory (see
        :meth:`ItemReads.peek_disk`). Read the rest with :meth:`read_entries`."""
        return self._async().items.peek_disk(disk_keys)

    def flush(self) -> None:
        """Wait until what this client cached so far is on the disk tier, where the node's
        other processes (DataLoader workers, ranks) find it."""
        core = self._async()
        self._run(core.items.cache.drain())

    def extend_hints(self, paths: Sequence[str]) -> None:
        """Announce reads that come after the announced ones (the next epoch)."""
        core = self._async()
        self._run(core.extend_hints([self.path(p) for p in paths]))

    def expect_order(self, paths: Sequence[str]) -> None:
        """The natural order of a dataset: reading it sequentially gets prefetched."""
        core = self._async()
        core.items.expect_order([self.path(p) for p in paths])

    def stat(self, path: str) -> Entry:
        """The entry (size, mtime, is_dir, chunks, ...) at ``path``."""
        core = self._async()
        return self._run(core.stat(self.path(path), fresh=True))

    def exists(self, path: str) -> bool:
        core = self._async()
        return self._run(core.exists(self.path(path)))

    @overload
    def open(self, path: str, mode: Literal["rb"] = "rb") -> io.BufferedReader: ...
    @overload
    def open(self, path: str, mode: Literal["wb"]) -> AtomicWriter: ...

    def open(self, path: str, mode: str = "rb") -> io.BufferedReader | AtomicWriter:
        """A seekable binary reader (``"rb"``), or an atomic writer (``"wb"``)."""
        filer_path = self.path(path)
        if mode == "rb":
            core = self._async()
            entry = self._run(core.stat(filer_path, fresh=True))
            raw = ReadaheadReader(entry, self._read_range, self._start_read, self.counters)
            return io.BufferedReader(raw, buffer_size=READ_BUFFER_BYTES)
        if mode == "wb":
            return AtomicWriter(filer_path, lambda data: self.write(filer_path, data))
        raise ValueError(f"mode must be 'rb' or 'wb', got {mode!r}")

    def _read_range(self, entry: Entry, offset: int, length: int) -> bytes:
        core = self._async()
        return self._run(core.read_entry(entry, offset, length))

    def _start_read(self, entry: Entry, offset: int,
                    length: int) -> concurrent.futures.Future[bytes]:
        core = self._async()
        return LOOP.submit(core.read_entry(entry, offset, length))

    # -- namespace -----------------------------------------------------------------------------

    def write(self, path: str, data: bytes) -> None:
        """Create or replace a file; readers see the old or the new content, never a mix."""
        core = self._async()
        self._run(core.write(self.path(path), bytes(data)))

    def delete(self, path: str, *, recursive: bool = False) -> None:
        core = self._async()
        self._run(core.delete(self.path(path), recursive=recursive))

    def move(self, source: str, target: str) -> None:
        core = self._async()
        self._run(core.move(self.path(source), self.path(target)))

    def listdir(self, path: str = "/") -> list[str]:
        """Sorted names in a directory."""
        return [e.name for e in self.scandir(path)]

    def scandir(self, path: str = "/") -> list[Entry]:
        """Sorted entries of a directory, with sizes and chunk lists."""
        core = self._async()
        return self._run(core.listdir(self.path(path)))

    def walk(self, top: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        """Like :func:`os.walk`, top-down."""
        core = self._async()
        walker = core.walk(self.path(top))

        async def step() -> tuple[str, list[str], list[str]] | None:
            return await anext(walker, None)

        while (item := self._run(step())) is not None:
            yield item

    def glob(self, pattern: str) -> list[str]:
        """Sorted paths matching ``pattern`` (``*``, ``?``, ``[...]``, ``**``)."""
        core = self._async()
        return self._run(core.glob(self.path(pattern)))

    # -- lifecycle -----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """This client's counters (``bytes_fetched``, ``requests``, ...), including the
        reads reported to the loop thread and not yet counted there (:meth:`settle`)."""
        self.settle()
        return self.counters.snapshot()

    def settle(self) -> None:
        """Wait until the loop thread has handled what this client told it without waiting
        (the cache hits of :meth:`read_entries`): the counters are then complete. On the
        loop thread itself (async code reading the counters) there is nothing to wait for."""
        if self._core is not None and self._pid == os.getpid() and not LOOP.is_current():
            self._run(asyncio.sleep(0))  # runs after everything posted before it

    def close(self) -> None:
        """Close connections; the loop thread stops when no client uses it."""
        self._close(timeout=None)

    def _close(self, timeout: float | None) -> None:
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        core, self._core = self._core, None
        if core is None or self._pid != os.getpid():
            return
        if LOOP.is_current():  # e.g. its owner collected on the loop thread: cannot wait here
            LOOP.release_soon(core.close())
            return
        try:
            LOOP.run(core.close(), timeout)
        finally:
            LOOP.release()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if sys.is_finalizing():  # the loop thread may be frozen already; the OS closes sockets
            return
        if getattr(self, "_closed", True) or getattr(self, "_pid", 0) != os.getpid():
            return
        # A finalizer must not wait for the loop thread: it may run anywhere, even while this
        # thread holds the import lock the loop thread needs. Close there, without waiting.
        self._closed = True
        core, self._core = self._core, None
        if core is not None:
            with contextlib.suppress(Exception):
                LOOP.release_soon(core.close())

    def __getstate__(self) -> dict[str, Any]:
        return {"filer": self.filer, "config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["filer"], state["config"])  # type: ignore[misc]


EXIT_CLOSE_S = 2.0
"""How long the exit handler waits, in all, for the clients left open to close."""
_OPEN: weakref.WeakSet[Client] = weakref.WeakSet()
"""Clients of this process with open connections."""


def _close_clients_left_open() -> None:
    """At interpreter exit, close what nobody closed (a notebook's or a script's client),
    and let the closes handed to the loop thread by collected clients finish: connections
    end cleanly instead of aiohttp printing "Unclosed client session" for each one. It runs
    before the interpreter finalizes, while the loop thread still runs."""
    deadline = time.monotonic() + EXIT_CLOSE_S
    for client in list(_OPEN):
        left = deadline - time.monotonic()
        if left <= 0:  # a stuck loop thread must not hold the exit up: the OS closes sockets
            return
        with contextlib.suppress(Exception):
            client._close(timeout=left)
    LOOP.wait_for_cleanups(max(0.0, deadline - time.monotonic()))


atexit.register(_close_clients_left_open)
