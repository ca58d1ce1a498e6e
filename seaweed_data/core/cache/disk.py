"""The disk tier: a byte-bounded cache directory shared by every process of a node.

Entries are appended to pack files (segments, :mod:`.disk_segments`), one being written per
process at a time, and found through a shared SQLite index (:mod:`.disk_index`). DataLoader
workers and the ranks of one node share one directory safely:

- an entry is appended with one write and filed in the index only afterwards, and every entry
  carries a header with its length, optional expiry and a checksum that also covers its key
  (:mod:`.disk_format`): a reader gets a whole, verified entry or a miss; a damaged,
  truncated, misfiled or expired entry is dropped from the index, counted, and read as a miss;
- the byte budget is the sum of the segments' allocations: room is reserved (a chunk at a
  time) before anything is appended, and evicted files are deleted (and truncated, so that
  open fds do not pin them) before the transaction that frees their room commits; so the pack
  files never hold more than ``capacity_bytes``, whatever the number of writers. Two rare
  cases go over for a moment: a writer whose open segment is evicted under it (the last
  resort, when live writers hold all the room) writes at most the one entry in hand into the
  deleted file, freed as soon as filing it fails; and after a damaged index was replaced, a
  writer of another process may fill the rest of its current chunk (at most 1 MiB) into a
  deleted file until it notices, within a second. The index database (~100 bytes per entry,
  plus its WAL) is not counted;
- when full, whole segments are evicted, oldest first (first in, first out);
- a writer killed at any moment leaves at most an unfiled tail in its segment, never read;
  its segment is sealed, or evicted when room is needed, once its ``flock`` is gone;
- files are 0600 and directories 0700 whatever the umask; keys are hashed, file names are
  segment ids;
- a full disk (ENOSPC, EDQUOT) or a read-only or unusable directory turns writing off with one
  warning; reads of what is there keep working;
- nothing is held across ``fork``: SQLite connections are closed before it, and the child
  closes the inherited fds and starts its own segment.

A hit costs one indexed lookup and one ``pread`` on a cached fd; a put, one ``pwrite`` and one
index row (plus a reservation every chunk). The methods are synchronous; call them from a
worker thread in async code. The directory must be on a local filesystem (SQLite's WAL needs
shared memory). The tier's parts and their lifecycle (first use, errors, fork) are
:class:`~.disk_state.DiskState`'s; the operations are here.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Sequence

from .disk_format import HEADER_SIZE, encode_header
from .disk_index import Location
from .disk_layout import entry_key
from .disk_state import DiskState

Buffer = bytes | bytearray | memoryview

_LOCATED_MAX = 1 << 20  # locations remembered from has_many (about 100 bytes each)


class DiskTier(DiskState):
    """A cache directory of ``capacity_bytes`` at most, shared by the node's processes.

    ``name`` keys are opaque strings (e.g. :attr:`BlockKey.digest`); the index holds their
    hash. ``capacity_bytes`` counts the pack files (a 28-byte header plus the payload per
    entry). ``segment_bytes`` is the size at which a pack file is sealed (by default
    ``capacity / 16``, at most 64 MiB): the unit of eviction. ``clock`` gives the time used for
    expiry (seconds since the epoch). The constructor does no I/O; the directory is created and
    checked on first use.
    """

    def __repr__(self) -> str:
        return f"DiskTier({self._layout.root!r}, capacity_bytes={self._capacity})"

    def get(self, name: str) -> bytes | None:
        """The payload stored for ``name``, or ``None`` on a miss (damaged and expired entries
        are dropped and read as misses)."""
        return self.get_key(entry_key(name))

    def get_key(self, key: bytes) -> bytes | None:
        """:meth:`get` of the entry whose index key (:func:`.entry_key`) is ``key``."""
        if not self._readable():
            return None
        known = self._located.pop(key, None)
        payload = self._read_located(key, known) if known is not None else None
        if payload is not None:
            self._count("hits", bytes_read=len(payload))
            return payload
        try:
            with self._read_lock:
                where = self._index.lookup(key)
                found = self._read(key, where) if where is not None else None
        except sqlite3.Error as exc:
            self._count("misses")
            self._index_error("looking up an entry", exc)
            return None
        if isinstance(found, bytes):
            self._count("hits", bytes_read=len(found))
            return found
        self._count("misses")
        if found is not None and where is not None:  # "expired" or "corrupt"
            self._forget(key, where, found)
        return None

    def get_many(self, names: Sequence[str]) -> list[bytes | None]:
        """:meth:`get` of several ``names``, in order: those :meth:`has_many` did not locate
        are looked up in one index query, and all are read under one lock and counted at
        once."""
        return self.get_many_keys([entry_key(name) for name in names])

    def get_many_keys(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """:meth:`get_many` of the entries whose index keys (:func:`.entry_key`) are
        ``keys``."""
        if not keys or not self._readable():
            return [None] * len(keys)
        places = [self._located.pop(key, None) for key in keys]
        try:
            with self._read_lock:
                unknown = [key for key, where in zip(keys, places, strict=True) if not where]
                if unknown:
                    located = self._index.locate_many(unknown, self._clock())
                    places = [where or located.get(key)
                              for key, where in zip(keys, places, strict=True)]
                found = [self._read_at(key, where) if where else None
                         for key, where in zip(keys, places, strict=True)]
        except sqlite3.Error as exc:
            self._index_error("looking up entries", exc)
            return [None] * len(keys)
        hits = [data for data in found if data is not None]
        self._count(hits=len(hits), misses=places.count(None), bytes_read=sum(map(len, hits)))
        # An entry filed but not read back whole: get() looks again, counts and drops it.
        return [data if data is not None or where is None else self.get_key(key)
                for key, where, data in zip(keys, places, found, strict=True)]

    def put(self, name: str, data: bytes | bytearray | memoryview, *,
            expires_at: float | None = None) -> bool:
        """Store ``data`` under ``name`` (a later put of the same name replaces it). ``False``
        when it was not stored: tier disabled, entry larger than the capacity, no room left
        (all of it held by live writers), already expired, or an I/O error."""
        return self.put_many([(name, data, expires_at)]) == 1

    def put_many(self, items: Sequence[tuple[str, Buffer, float | None]]) -> int:
        """:meth:`put` of several ``(name, data, expires_at)``, filed in the index in one
        transaction (a commit per burst of writes, not per entry); how many were stored."""
        if not self.enabled:
            return 0
        batch = [entry for entry in map(self._prepared, items) if entry is not None]
        if not batch:
            return 0
        # (needs_room read unlocked: a stale answer only moves a check to the next put)
        if (time.monotonic() >= self._next_check
                or self._writer.needs_room(sum(len(h) + len(v) for _, (h, v), _ in batch))):
            self._check_now()
            if not self._ensure_ready():
                return 0
        with self._write_lock:
            try:
                stored, evicted = self._writer.store_many(batch)
            except OSError as exc:
                self._fail("writing an entry", exc)
                return 0
            except sqlite3.Error as exc:
                self._index_error("writing an entry", exc)
                return 0
        self._count(writes=len(stored), rejected=len(batch) - len(stored), evictions=evicted,
                    bytes_written=sum(stored))
        return len(stored)

    def _prepared(self, item: tuple[str, Buffer, float | None]
                  ) -> tuple[bytes, tuple[bytes, memoryview], float | None] | None:
        """``(key, (header, payload), expires_at)`` of an entry to store; None (counted when
        too large) for one that is not to be stored."""
        name, data, expires_at = item
        view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
        if expires_at is not None and (math.isnan(expires_at) or expires_at <= self._clock()):
            return None
        if HEADER_SIZE + view.nbytes > self._capacity:
            self._count("rejected")
            return None
        key = entry_key(name)
        return key, (encode_header(view, expires_at, key=key), view), expires_at

    def remove(self, name: str) -> None:
        """Delete the entry of ``name`` if there is one."""
        if self._ensure_ready():
            try:
                with self._write_lock:
                    self._index.forget(entry_key(name))
            except sqlite3.Error as exc:
                self._index_error("removing an entry", exc)

    def __contains__(self, name: object) -> bool:
        """Whether an unexpired entry is filed for ``name`` (nothing is read or verified)."""
        return isinstance(name, str) and self.has(name)

    def has(self, name: str) -> bool:
        """Whether an unexpired entry is filed for ``name``: one index lookup, nothing read
        (a cheap guess for prefetching; :meth:`get` still checks the entry)."""
        if not self._ensure_ready():
            return False
        try:
            with self._read_lock:
                where = self._index.lookup(entry_key(name))
        except sqlite3.Error:
            return False
        return where is not None and (where.expires is None or where.expires > self._clock())

    def has_many(self, names: Sequence[str]) -> set[str]:
        """The ``names`` with an unexpired entry filed (like :meth:`has`, in a few queries for
        all of them: what a prefetcher asks about a whole epoch's hints)."""
        if not names or not self._ensure_ready():
            return set()
        keys = {entry_key(name): name for name in names}
        try:
            with self._read_lock:
                found = self._index.locate_many(list(keys), self._clock())
        except sqlite3.Error:
            return set()
        if len(self._located) + len(found) > _LOCATED_MAX:
            self._located.clear()
        self._located.update(found)  # a get of one of them skips its index query
        return {keys[key] for key in found}

    def used_bytes(self) -> int:
        """Bytes of the budget in use by all processes (pack files plus the unused part of
        open segments' allocations); 0 when the tier is unusable."""
        if not self._ensure_ready():
            return 0
        try:
            with self._read_lock:
                return self._index.used()
        except sqlite3.Error as exc:
            self._index_error("reading the budget", exc)
            return 0

    def stats(self) -> dict[str, int]:
        """This process's counters (reset in a forked child) plus ``bytes`` (used_bytes) and
        ``capacity``."""
        with self._stats_lock:
            out = dict(self._stats)
        out["bytes"] = self.used_bytes()
        out["capacity"] = self._capacity
        return out

    # -- reading -------------------------------------------------------------------------------

    def _read(self, key: bytes, where: Location) -> bytes | str | None:
        """The verified payload at ``where`` (under the read lock); ``"expired"`` or
        ``"corrupt"`` when the row must be dropped, ``None`` for a plain miss."""
        if where.expires is not None and where.expires <= self._clock():
            return "expired"
        found = self._readers.read(self._layout, where.segment, where.offset, where.length, key)
        if found == "error":
            self._count("errors")
            return None
        return found

    def _read_located(self, key: bytes, where: Location) -> bytes | None:
        """The payload at a location learned earlier (:meth:`has_many`), if it is still
        there and whole. Entries never move and their checksum covers the key, so a stale
        location can only miss; the caller then asks the index (which counts and drops)."""
        with self._read_lock:
            return self._read_at(key, where)

    def _read_at(self, key: bytes, where: Location) -> bytes | None:
        """:meth:`_read_located` under the read lock: ``None`` for an expired, evicted or
        damaged entry (not counted)."""
        if where.expires is not None and where.expires <= self._clock():
            return None
        found = self._readers.read(self._layout, where.segment, where.offset, where.length,
                                   key)
        return found if isinstance(found, bytes) else None

    def _forget(self, key: bytes, where: Location, counter: str) -> None:
        self._count(counter)
        try:
            with self._write_lock:
                self._index.forget(key, where)
        except sqlite3.Error as exc:
            self._index_error("dropping an entry", exc)
