"""What the disk-cache tests look at in a cache directory: pack files, index rows, and a
consistent view of both (the index's write lock, which every reservation and eviction takes)."""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from seaweed_data.core.cache.disk_layout import entry_key


def payload_for(key: str, size: int = 4096) -> bytes:
    """Deterministic bytes for ``key`` (so any process can check what it read)."""
    return random.Random(key).randbytes(size)


def pack_files(root: Path) -> dict[Path, int]:
    """Every pack file and its size (files removed while listing are skipped)."""
    found = {}
    packs = root / "packs"
    for path in packs.iterdir() if packs.is_dir() else []:
        with contextlib.suppress(FileNotFoundError):
            found[path] = path.stat().st_size
    return found


def pack_total(root: Path) -> int:
    return sum(pack_files(root).values())


def connect(root: Path) -> sqlite3.Connection:
    return sqlite3.connect(root / "index.db", isolation_level=None, timeout=30)


@dataclass
class Row:
    """One entry of the index, with the path of its pack file."""

    path: Path
    offset: int
    length: int
    expires: float | None


def index_row(root: Path, name: str) -> Row | None:
    with contextlib.closing(connect(root)) as db:
        row = db.execute("SELECT segment, offset, length, expires FROM entries WHERE key = ?",
                         (entry_key(name),)).fetchone()
    if row is None:
        return None
    return Row(root / "packs" / f"{row[0]:016x}.pack", row[1], row[2], row[3])


def all_rows(root: Path) -> list[Row]:
    """Every entry of the index, in the order of their pack files and offsets."""
    with contextlib.closing(connect(root)) as db:
        rows = db.execute("SELECT segment, offset, length, expires FROM entries "
                          "ORDER BY segment, offset").fetchall()
    return [Row(root / "packs" / f"{s:016x}.pack", o, n, e) for s, o, n, e in rows]


def segments(root: Path) -> list[tuple[int, int, int]]:
    """``(id, allocated, open)`` of every segment, oldest first."""
    with contextlib.closing(connect(root)) as db:
        return db.execute("SELECT id, allocated, open FROM segments ORDER BY id").fetchall()


@dataclass
class View:
    """Pack bytes on disk and the budget on record, seen at one instant."""

    on_disk: int
    allocated: int
    over_allocation: list[str]  # segments whose file is larger than its allocation
    unknown_files: int  # pack files without a row


@contextlib.contextmanager
def consistent_view(root: Path) -> Iterator[View]:
    """Hold the index's write lock (no reservation, eviction or new segment meanwhile; appends
    go on, inside their allocations) and look at the files."""
    with contextlib.closing(connect(root)) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = {f"{s:016x}.pack": a for s, a in
                    db.execute("SELECT id, allocated FROM segments").fetchall()}
            files = {p.name: size for p, size in pack_files(root).items()}
            yield View(sum(files.values()), sum(rows.values()),
                       [n for n, size in files.items() if n in rows and size > rows[n]],
                       len(set(files) - set(rows)))
        finally:
            db.execute("ROLLBACK")


def open_paths() -> set[Path]:
    """What this process has open (Linux), to check that nothing leaks."""
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            found.add(Path(os.readlink(fd)))
    return found
