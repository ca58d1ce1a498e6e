"""The appending side of the disk tier in one process: its open segment and its puts.

An entry is appended with one ``pwritev`` (:func:`write_all`) inside the room the index
granted this segment, and filed in the index only afterwards, so a row always points at a
whole entry. Room is reserved a chunk at a time (:meth:`.PackIndex.reserve`), so most puts
cost one write and one index row. When the segment was evicted under us (the last resort of
another writer short of room), filing fails, the entry is dropped with the segment, and the put
is tried once more in a new segment.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Sequence

from .disk_index import Location, PackIndex
from .disk_segments import OpenSegment

MAX_GROUP = 256
"""Entries appended with one write at most (each is a header and a payload: 512 buffers,
half of Linux's IOV_MAX)."""


def write_all(fd: int, parts: Sequence[bytes | memoryview], offset: int) -> None:
    """Write every byte of ``parts`` to ``fd`` at ``offset`` (the one low-level write; tests
    inject faults here)."""
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


class PackWriter:
    """This process's open segment of one directory. Not thread-safe: the caller holds a
    lock. Errors (``OSError``, ``sqlite3.Error``) reach the caller, which judges them."""

    def __init__(self, index: PackIndex, *, capacity: int, segment_bytes: int,
                 chunk: int) -> None:
        self._index = index
        self._capacity = capacity
        self._segment_bytes = segment_bytes
        self._chunk = chunk
        self.segment: OpenSegment | None = None

    def __del__(self) -> None:  # a tier dropped without close(): others seal the segment
        self.forget()

    def needs_room(self, size: int) -> bool:
        """Whether an entry of ``size`` bytes needs a reservation first."""
        segment = self.segment
        return segment is None or segment.offset + size > segment.allocated

    def store(self, key: bytes, parts: Sequence[bytes | memoryview],
              expires_at: float | None) -> tuple[bool, int]:
        """Append and file one entry; returns ``(stored, entries evicted to make room)``;
        not stored when no room can be made (live writers hold all of it)."""
        size = sum(len(p) for p in parts)
        evicted = 0
        for _ in range(2):  # a second try when the segment was evicted under us
            segment, more = self._room_for(size)
            evicted += more
            if segment is None:
                return False, evicted
            where = Location(segment.id, segment.offset, size, expires_at)
            segment.offset += size  # (after a failed write too: never write over a torn entry)
            write_all(segment.fd, parts, where.offset)
            if self._index.insert_many([(key, where)])[0]:
                return True, evicted
            self.drop(sealed=True)
        return False, evicted

    def store_many(self, entries: Sequence[tuple[bytes, Sequence[bytes | memoryview],
                                                  float | None]]) -> tuple[list[int], int]:
        """Append several entries, then file them in one index transaction; returns the
        payload sizes of those stored and the entries evicted to make room. Entries that
        lie one after the other in the room granted are appended with one ``pwritev``
        (a write per entry cost as much as the rest of storing it). An entry whose segment
        was evicted before the transaction is stored once more, alone."""
        written: list[tuple[bytes, Location, Sequence[bytes | memoryview]]] = []
        group: list[tuple[bytes, Location, Sequence[bytes | memoryview]]] = []
        evicted = 0
        try:
            for key, parts, expires_at in entries:
                size = sum(len(p) for p in parts)
                if group and (self.needs_room(size) or len(group) >= MAX_GROUP):
                    written += self._append(group)
                segment, more = self._room_for(size)
                evicted += more
                if segment is None:
                    continue
                group.append((key, Location(segment.id, segment.offset, size, expires_at),
                              parts))
                segment.offset += size  # (also after a failed write: never over a torn entry)
            written += self._append(group)
        except OSError:  # (a full disk) what was written whole is still filed
            written += self._written_whole(group)
            self._index.insert_many([(key, where) for key, where, _ in written])
            raise
        filed = self._index.insert_many([(key, where) for key, where, _ in written])
        stored: list[int] = []
        for (key, where, parts), ok in zip(written, filed, strict=True):
            if not ok:
                if self.segment is not None and self.segment.id == where.segment:
                    self.drop(sealed=True)
                ok, more = self.store(key, parts, where.expires)
                evicted += more
            if ok:
                stored.append(len(parts[-1]))
        return stored, evicted

    def _append(self, group: list[tuple[bytes, Location, Sequence[bytes | memoryview]]]
                ) -> list[tuple[bytes, Location, Sequence[bytes | memoryview]]]:
        """Write the entries of ``group`` (adjacent, in the open segment) with one write,
        then empty ``group`` and return what it held (on an error it holds them still)."""
        if not group:
            return []
        segment = self.segment
        assert segment is not None and segment.id == group[0][1].segment  # flushed before a switch
        write_all(segment.fd, [part for _, _, parts in group for part in parts],
                  group[0][1].offset)
        done = list(group)
        group.clear()
        return done

    def _written_whole(self, group: list[tuple[bytes, Location, Sequence[bytes | memoryview]]]
                       ) -> list[tuple[bytes, Location, Sequence[bytes | memoryview]]]:
        """Those entries of ``group``, whose write failed, that reached the segment whole
        (a segment grows only by this writer's appends)."""
        if not group or self.segment is None:
            return []
        try:
            size = os.fstat(self.segment.fd).st_size
        except OSError:
            return []
        return [entry for entry in group if entry[1].offset + entry[1].length <= size]

    def _room_for(self, size: int) -> tuple[OpenSegment | None, int]:
        segment = self.segment
        if segment is not None and segment.offset + size <= segment.allocated:
            return segment, 0
        current = (segment.id, segment.offset, segment.allocated) if segment else None
        grant = self._index.reserve(current, size, chunk=self._chunk,
                                    segment_bytes=self._segment_bytes, capacity=self._capacity)
        if segment is not None and grant.segment == segment.id:
            segment.allocated = grant.allocated
            return segment, grant.evicted
        self.drop(sealed=True)  # sealed by the reservation, or evicted
        if grant.segment is None or grant.fd is None:
            return None, grant.evicted
        self.segment = OpenSegment(grant.segment, grant.fd, 0, grant.allocated)
        return self.segment, grant.evicted

    def drop(self, *, sealed: bool = False) -> None:
        """Stop appending: seal the segment at its size (unless the index already did; best
        effort, a dead writer's segment is sealed by others) and close its fd, which releases
        its flock."""
        segment, self.segment = self.segment, None
        if segment is None:
            return
        if not sealed:
            with contextlib.suppress(sqlite3.Error, OSError):
                self._index.seal(segment.id, segment.offset)
        with contextlib.suppress(OSError):
            os.close(segment.fd)

    def forget(self) -> None:
        """In a forked child: close the inherited fd without sealing (the segment and its
        flock stay the parent's)."""
        segment, self.segment = self.segment, None
        if segment is not None:
            with contextlib.suppress(OSError):
                os.close(segment.fd)
