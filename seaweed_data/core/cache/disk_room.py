"""Room in the disk tier's byte budget: reserved before appending, made by evicting whole
segments (oldest first), and taken back from writers that died.

Every function runs inside the caller's ``BEGIN IMMEDIATE`` transaction on the index
(:class:`~.disk_index.PackIndex`), so the budget holds whatever the number of writers: the
sum of ``segments.allocated`` never exceeds the capacity. An evicted segment's file is
deleted before the transaction that frees its room commits.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .disk_layout import DiskLayout
from .disk_segments import (
    create_segment,
    destroy_segment,
    is_abandoned,
    new_segment_id,
    segment_size,
)


@dataclass(frozen=True, slots=True)
class Grant:
    """The outcome of a reservation: the segment to append to (``None``: no room), its write
    fd when it is a new one, its allocation now, and the entries evicted for it."""

    segment: int | None
    fd: int | None
    allocated: int
    evicted: int


def reserve(db: sqlite3.Connection, layout: DiskLayout, current: tuple[int, int, int] | None,
            need: int, *, chunk: int, segment_bytes: int, capacity: int,
            created: list[tuple[int, str]]) -> Grant:
    """Room for ``need`` more bytes: in the ``current`` segment (``(id, offset, allocated)``)
    while it stays under ``segment_bytes``, else in a new segment (the current one is then
    sealed), growing by up to ``chunk`` at once. A new segment's fd and path are added to
    ``created`` (for the caller to destroy if the transaction fails)."""
    evicted = 0
    if current is not None:
        segment, offset, allocated = current
        if db.execute("SELECT 1 FROM segments WHERE id = ?", (segment,)).fetchone():
            if offset + need <= segment_bytes:
                want = max(offset + need, min(allocated + chunk, segment_bytes)) - allocated
                got, evicted = make_room(db, layout, want, offset + need - allocated,
                                         capacity, keep=segment, evict_live=False)
                if got is not None:
                    db.execute("UPDATE segments SET allocated = ? WHERE id = ?",
                               (allocated + got, segment))
                    return Grant(segment, None, allocated + got, evicted)
            db.execute("UPDATE segments SET allocated = ?, open = 0 WHERE id = ?",
                       (offset, segment))
    want = max(need, min(chunk, segment_bytes))
    got, more = make_room(db, layout, want, need, capacity, keep=None, evict_live=True)
    if got is None:
        return Grant(None, None, 0, evicted + more)
    segment = new_segment_id()
    path = layout.segment_path(segment)
    fd = create_segment(path)
    created.append((fd, path))
    db.execute("INSERT INTO segments VALUES (?, ?, 1)", (segment, got))
    return Grant(segment, fd, got, evicted + more)


def make_room(db: sqlite3.Connection, layout: DiskLayout, want: int, minimum: int,
              capacity: int, *, keep: int | None, evict_live: bool) -> tuple[int | None, int]:
    """Evict until at least ``minimum`` (ideally ``want``) bytes are free, never ``keep``
    and live writers' segments only when ``evict_live``; returns ``(bytes granted or None,
    entries evicted)``."""
    room = capacity - int(db.execute("SELECT total(allocated) FROM segments").fetchone()[0])
    evicted = 0
    if room < minimum:
        live: list[tuple[int, int]] = []
        rows = db.execute("SELECT id, open, allocated FROM segments WHERE id != ? "
                          "ORDER BY id", (-1 if keep is None else keep,)).fetchall()
        for segment, is_open, allocated in rows:
            if room >= minimum:
                break
            if is_open and not is_abandoned(layout.segment_path(segment)):
                live.append((segment, allocated))
                continue
            evicted += evict(db, layout, segment)
            room += allocated
        for segment, allocated in live:  # the last resort: a live writer's segment
            if room >= minimum or not evict_live:
                break
            evicted += evict(db, layout, segment)
            room += allocated
    if room < minimum:
        return None, evicted
    return min(want, room), evicted


def evict(db: sqlite3.Connection, layout: DiskLayout, segment: int) -> int:
    """Delete a segment, its entries' rows and its file; returns the entries dropped."""
    dropped = db.execute("DELETE FROM entries WHERE segment = ?", (segment,)).rowcount
    db.execute("DELETE FROM segments WHERE id = ?", (segment,))
    destroy_segment(layout.segment_path(segment))  # before the commit: never over budget
    return max(dropped, 0)


def reclaim(db: sqlite3.Connection, layout: DiskLayout) -> None:
    """Delete pack files without a row and seal the open segments of dead writers."""
    rows = db.execute("SELECT id, open FROM segments").fetchall()
    files = layout.segment_files()
    known = {segment for segment, _ in rows}
    for segment, path in files.items():
        if segment not in known:
            destroy_segment(path)
    for segment, is_open in rows:
        path = layout.segment_path(segment)
        size = segment_size(path) if segment in files else None
        if size is None:
            evict(db, layout, segment)
        elif is_open and is_abandoned(path):
            db.execute("UPDATE segments SET allocated = ?, open = 0 WHERE id = ?",
                       (size, segment))
