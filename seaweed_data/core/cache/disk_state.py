"""The disk tier's parts and their lifecycle: first use, the errors that turn it off, fork.

:class:`DiskState` holds what a :class:`~.disk.DiskTier` is made of (the directory's layout,
the index, this process's writer and read fds, their locks and counters) and keeps it
usable: the directory is created and checked on first use; a full disk or an unwritable
directory turns writing off with one warning, a damaged index is replaced by an empty one,
and nothing is held across ``fork``. The cache operations are :class:`~.disk.DiskTier`'s;
the design as a whole is described in :mod:`.disk`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable

from .disk_index import Location, PackIndex, error_kind
from .disk_layout import DiskLayout
from .disk_segments import ReadFds
from .disk_writer import PackWriter

logger = logging.getLogger("seaweed_data.core.cache.disk")  # the tier's messages, one name

_DISABLING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                               errno.EPERM})
_STAT_KEYS = ("hits", "misses", "writes", "corrupt", "expired", "evictions", "errors",
              "rejected", "bytes_read", "bytes_written")
_MAX_SEGMENT_BYTES = 64 << 20
_MAX_CHUNK_BYTES = 1 << 20
_CHECK_INTERVAL_S = 1.0  # how often a reader looks whether the index was replaced
_LIVE: weakref.WeakSet[DiskState] = weakref.WeakSet()
_FORKING: list[DiskState] = []  # the tiers locked by the before-fork hook


class DiskState:
    """The parts of a disk tier in ``directory`` and their lifecycle (see the module
    docstring; :class:`~.disk.DiskTier` documents the arguments)."""

    def __init__(self, directory: str | os.PathLike[str], capacity_bytes: int, *,
                 segment_bytes: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        if segment_bytes is not None and segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be > 0, got {segment_bytes}")
        self._layout = DiskLayout(os.fspath(directory))
        self._capacity = capacity_bytes
        self._segment_bytes = segment_bytes or max(min(capacity_bytes // 16,
                                                       _MAX_SEGMENT_BYTES), 1)
        # Room is reserved a chunk at a time; a writer may hold one unused chunk.
        self._chunk = min(self._segment_bytes, _MAX_CHUNK_BYTES,
                          max(capacity_bytes // 64, 64 << 10))
        self._clock = clock
        self._index = PackIndex(self._layout)
        self._readers = ReadFds()
        self._writer = PackWriter(self._index, capacity=capacity_bytes,
                                  segment_bytes=self._segment_bytes, chunk=self._chunk)
        self._mutex = threading.RLock()  # first use (taken before the two below)
        self._stats_lock = threading.Lock()  # counters (taken last)
        self._write_lock = threading.RLock()  # the writer connection and the open segment
        self._read_lock = threading.Lock()  # the reader connection and read fds (taken second)
        self._ready = False
        self._writable = True
        self._closed = False
        self._next_check = 0.0
        self._stats = dict.fromkeys(_STAT_KEYS, 0)
        self._located: dict[bytes, Location] = {}  # learned by has_many, used once by get
        _LIVE.add(self)

    def __del__(self) -> None:  # dropped without close(): seal the segment, close everything
        with contextlib.suppress(Exception):
            self._let_go()

    @property
    def directory(self) -> str:
        """The absolute path of the cache directory."""
        return self._layout.root

    @property
    def capacity_bytes(self) -> int:
        """The byte budget of the pack files."""
        return self._capacity

    @property
    def enabled(self) -> bool:
        """Whether puts are accepted (false after ENOSPC, on an unusable directory, or closed)."""
        return self._ensure_ready() and self._writable

    def close(self) -> None:
        """Seal this process's segment and close every fd and connection; afterwards gets miss
        and puts return ``False``."""
        self._closed = True
        self._let_go()

    # -- first use, errors, fork --------------------------------------------------------------

    def _readable(self) -> bool:
        """Whether reads can go on: ready, not closed, and (looked at once a second) still
        on the index other processes use."""
        if (not self._ready and not self._ensure_ready()) or self._closed:
            return False
        if time.monotonic() >= self._next_check:
            self._check_now()
            return self._ensure_ready()
        return True

    def _ensure_ready(self) -> bool:
        # (a forked child is reset by the at-fork hooks below, not by a getpid() per call)
        if self._closed:
            return False
        if self._ready:
            return True
        with self._mutex:
            if not self._ready and not self._closed:
                self._prepare()
        return self._ready

    def _prepare(self) -> None:
        """Create and check the directory, connect to the index and reclaim what dead writers
        left; a refused directory turns the tier off, an unwritable one (read-only
        filesystem, full disk) leaves it reading what is there."""
        try:
            refusal, warning = self._layout.check()
        except OSError as exc:
            refusal, warning = f"cannot create {self._layout.root}: {exc}", None
        if refusal is not None:
            self._closed = True
            logger.warning("disk cache disabled: %s", refusal)
            return
        if warning is not None:
            logger.warning("disk cache: %s", warning)
        try:
            self._layout.create_tree()
            if self._layout.remove_legacy():
                logger.info("disk cache: removed a cache of the former layout in %s",
                            self._layout.root)
        except OSError as exc:
            self._fail("preparing the directory", exc)
        try:
            with self._write_lock:
                self._index.reader()
                if self._writable and not self._index.readonly:
                    self._index.reclaim()
        except OSError as exc:
            self._fail("opening the index", exc)
        except sqlite3.Error as exc:
            self._index_error("opening the index", exc)
        if self._index.readonly:
            self._disable("opening the index", "read-only filesystem")
        self._ready = True

    def _fail(self, what: str, exc: OSError) -> None:
        """Count an I/O error; a full disk or unwritable directory turns writing off."""
        self._count("errors")
        if exc.errno in _DISABLING_ERRNOS:
            self._disable(what, exc)
        elif isinstance(exc, FileNotFoundError):  # the directory was removed under us
            self._ready = False
            self._let_go()
        else:
            logger.debug("disk cache: error %s: %s", what, exc)

    def _index_error(self, what: str, exc: sqlite3.Error) -> None:
        """Count an index error: a damaged index is replaced by an empty one, a full disk or
        read-only database turns writing off, anything else (busy) is only counted."""
        self._count("errors")
        kind = error_kind(exc)
        if kind == "corrupt":
            logger.warning("disk cache %s: the index is damaged (%s); starting an empty one",
                           self._layout.root, exc)
            try:
                self._let_go(reset=True)
            except (OSError, sqlite3.Error) as again:
                self._disable("replacing the damaged index", again)
        elif kind in ("full", "readonly"):
            self._disable(what, exc)
        else:
            logger.debug("disk cache: error %s: %s", what, exc)

    def _disable(self, what: str, why: object) -> None:
        with self._stats_lock:
            first, self._writable = self._writable, False
        if first:
            logger.warning("disk cache %s: writing disabled after %s: %s; cached entries are "
                           "still read", self._layout.root, what, why)

    def _before_fork(self) -> None:
        """Close the SQLite connections (SQLite's per-process lock bookkeeping must not be
        inherited) and hold the locks so that no thread is inside the tier at the fork."""
        self._write_lock.acquire()
        self._read_lock.acquire()
        self._index.disconnect()

    def _after_fork_in_parent(self) -> None:
        self._read_lock.release()
        self._write_lock.release()

    def _after_fork(self) -> None:
        """In the child: close the inherited fds (the segment's flock stays the parent's),
        start a segment of its own when it writes, count afresh."""
        self._mutex = threading.RLock()
        self._stats_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._writer.forget()
        self._readers.close_all()
        self._index.after_fork()
        self._stats = dict.fromkeys(_STAT_KEYS, 0)

    def _check_now(self) -> None:
        """Connect again when another process replaced the index (a reader looks once a
        second)."""
        self._next_check = time.monotonic() + _CHECK_INTERVAL_S
        with self._write_lock:
            self._check_index()

    def _check_index(self) -> None:
        if self._index.stale():  # replaced after damage, or removed with the directory
            self._let_go()
            self._ready = False  # the next use prepares the directory again

    def _let_go(self, *, reset: bool = False) -> None:
        """Seal and close the segment, close the read fds and the index connections (after
        replacing a damaged index, with ``reset``)."""
        with self._write_lock, self._read_lock:
            self._writer.drop()
            self._readers.close_all()
            if reset:
                self._index.reset()
            else:
                self._index.disconnect()

    def _count(self, *names: str, **amounts: int) -> None:
        with self._stats_lock:
            for name in names:
                self._stats[name] += 1
            for name, amount in amounts.items():
                self._stats[name] += amount

def _before_fork() -> None:
    _FORKING[:] = list(_LIVE)
    for tier in _FORKING:
        tier._before_fork()


def _after_fork_in_parent() -> None:
    for tier in _FORKING:
        tier._after_fork_in_parent()
    _FORKING.clear()


def _after_fork_in_child() -> None:
    for tier in _FORKING:
        tier._after_fork()
    _FORKING.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
