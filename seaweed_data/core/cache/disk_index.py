"""The disk tier's index, shared by every process of a node: one SQLite database in WAL mode.

::

    segments(id INTEGER PRIMARY KEY, allocated INTEGER, open INTEGER)
    entries(key BLOB PRIMARY KEY, segment, offset, length, expires) WITHOUT ROWID

The byte budget is the sum of ``segments.allocated``. A writer reserves room in its segment
(a chunk of several entries at once, so most puts need no reservation) *before* it appends,
and appends only within its allocation; so the pack files never hold more than the budget,
whatever the number of writers. An open segment's allocation may run ahead of its file by at
most one chunk; sealing the segment (its writer rolls to a new one or closes) brings the
allocation down to the file's size. A reservation that does not fit evicts whole segments in
the same ``BEGIN IMMEDIATE`` transaction, oldest first: sealed ones and open ones whose
writer is gone (no ``flock``), and as a last resort open ones of live writers (whose next
entry is then dropped: :meth:`PackIndex.insert_many` files an entry only while its segment
exists). Reserving, evicting and reclaiming room is :mod:`.disk_room`.

A segment's file is created, locked and recorded in one transaction, so a pack file without a
row, seen from inside a transaction, is the leftover of a writer that died there:
:meth:`PackIndex.reclaim` deletes it, and seals the open segments of dead writers.

Connections are never carried across ``fork``: :meth:`PackIndex.disconnect` runs before a fork
(SQLite's per-process lock bookkeeping would be shared with the child) and the next use
connects again. A damaged database is replaced by an empty one, and every pack file with it,
under an exclusive ``flock`` of the ``lock`` file; other processes notice that the file was
replaced (:meth:`PackIndex.stale`) and connect again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from . import disk_room
from .disk_layout import DiskLayout, open_private_file
from .disk_room import Grant
from .disk_segments import destroy_segment

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0
_WAL_LIMIT_BYTES = 16 << 20  # what the WAL is cut back to after a checkpoint
_SCHEMA = (
    "CREATE TABLE segments(id INTEGER PRIMARY KEY, allocated INTEGER NOT NULL, "
    "open INTEGER NOT NULL)",
    "CREATE TABLE entries(key BLOB PRIMARY KEY, segment INTEGER NOT NULL, "
    "offset INTEGER NOT NULL, length INTEGER NOT NULL, expires REAL) WITHOUT ROWID",
    "CREATE INDEX entries_by_segment ON entries(segment)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
_KEYS_PER_QUERY = 500  # bound variables per query (SQLite allows at least 999)
_INSERT = "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)"
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_SQLITE_READONLY, _SQLITE_FULL, _SQLITE_CANTOPEN = 8, 13, 14


class IndexDamaged(sqlite3.DatabaseError):
    """The database is not an index of this schema version."""


def error_kind(exc: sqlite3.Error) -> str:
    """``"corrupt"`` (the database must be replaced), ``"full"``, ``"readonly"`` or
    ``"other"`` (busy, I/O error, ...)."""
    if isinstance(exc, IndexDamaged):
        return "corrupt"
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return "corrupt"
    if code == _SQLITE_FULL:
        return "full"
    if code in (_SQLITE_READONLY, _SQLITE_CANTOPEN):
        return "readonly"
    return "other"


class Location(NamedTuple):
    """Where an entry lies: ``length`` bytes (header included) at ``offset`` of a segment."""

    segment: int
    offset: int
    length: int
    expires: float | None


class PackIndex:
    """The SQLite index of one :class:`DiskLayout`: two connections per process (lookups never
    wait behind this process's writes). The caller serializes the use of each connection."""

    def __init__(self, layout: DiskLayout) -> None:
        self._layout = layout
        self._connect_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._inode: int | None = None
        self.readonly = False

    # -- connections --------------------------------------------------------------------------

    def reader(self) -> sqlite3.Connection:
        return self._reader or self._connect()[0]

    def writer(self) -> sqlite3.Connection:
        writer = self._writer or self._connect()[1]
        if writer is None:
            raise sqlite3.OperationalError("the disk cache index is read-only")
        return writer

    def _connect(self) -> tuple[sqlite3.Connection, sqlite3.Connection | None]:
        with self._connect_lock:
            if self._reader is None:
                with self._dir_lock():
                    self._open_locked()
            assert self._reader is not None
            return self._reader, self._writer

    def _open_locked(self) -> None:
        """Connect (creating the database if needed); a damaged database is replaced, and a
        read-only filesystem gets an immutable read-only connection."""
        try:
            self._reader, self._writer = self._open_pair()
        except sqlite3.DatabaseError as exc:
            if error_kind(exc) == "corrupt":
                logger.warning("disk cache %s: the index is damaged (%s); starting an empty "
                               "one", self._layout.root, exc)
                self._wipe()
                self._reader, self._writer = self._open_pair()
            elif not _writable(self._layout.root):
                uri = f"file:{urllib.parse.quote(self._layout.index)}?mode=ro&immutable=1"
                self._reader = sqlite3.connect(uri, uri=True, isolation_level=None,
                                               check_same_thread=False)
                self.readonly = True
            else:
                raise
        with contextlib.suppress(OSError):
            self._inode = os.stat(self._layout.index).st_ino

    def _open_pair(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        with contextlib.suppress(OSError):  # private from the start: -wal and -shm copy its mode
            # (O_EXCL: closing an fd of a file this process has open in SQLite would drop the
            # POSIX locks SQLite holds on it)
            os.close(open_private_file(self._layout.index, os.O_RDWR | os.O_EXCL))
        first = _connect(self._layout.index)
        try:
            _ensure_schema(first)
            return first, _connect(self._layout.index)
        except BaseException:
            first.close()
            raise

    def __del__(self) -> None:
        # Now, not whenever the cyclic GC gets to the connections (each is in a cycle with its
        # statement cache): a connection still open at a fork breaks SQLite's locking.
        self.disconnect()

    def disconnect(self) -> None:
        """Close this process's connections (no other thread may be using them)."""
        with self._connect_lock:
            for conn in (self._reader, self._writer):
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
            self._reader = self._writer = None

    def after_fork(self) -> None:
        """In a forked child: forget the connect lock, which a parent thread may hold."""
        self._connect_lock = threading.Lock()

    def stale(self) -> bool:
        """Whether the database file was replaced or removed since this process connected."""
        if self._reader is None:
            return False
        try:
            return os.stat(self._layout.index).st_ino != self._inode
        except FileNotFoundError:
            return True

    def reset(self) -> None:
        """Replace a damaged database with an empty one (and delete every pack file), unless
        another process already did; then connect to the new one."""
        inode = self._inode
        self.disconnect()
        with self._connect_lock, self._dir_lock():
            try:
                current: int | None = os.stat(self._layout.index).st_ino
            except FileNotFoundError:
                current = None
            if current is not None and current == inode:
                self._wipe()
            self._open_locked()

    def _wipe(self) -> None:
        for path in self._layout.segment_files().values():
            destroy_segment(path)
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._layout.index + suffix)

    @contextlib.contextmanager
    def _dir_lock(self) -> Iterator[None]:
        """The ``lock`` file, flock'ed exclusively (connecting, resetting); without it when it
        cannot be opened (a read-only directory, where nobody resets anything)."""
        try:
            fd = open_private_file(self._layout.lock, os.O_RDWR)
        except OSError:
            try:
                fd = os.open(self._layout.lock, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                yield
                return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- lookups and updates -------------------------------------------------------------------

    def lookup(self, key: bytes) -> Location | None:
        row = self.reader().execute(
            "SELECT segment, offset, length, expires FROM entries WHERE key = ?",
            (key,)).fetchone()
        return Location(*row) if row is not None else None

    def locate_many(self, keys: list[bytes], now: float) -> dict[bytes, Location]:
        """Where the entries of ``keys`` that have not expired by ``now`` lie: a few
        queries for any number of keys, where :meth:`lookup` costs one each."""
        found: dict[bytes, Location] = {}
        reader = self.reader()
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            batch = keys[start:start + _KEYS_PER_QUERY]
            marks = ",".join("?" * len(batch))
            rows = reader.execute(
                "SELECT key, segment, offset, length, expires FROM entries "
                f"WHERE key IN ({marks}) "  # only "?"s are formatted in
                "AND (expires IS NULL OR expires > ?)", (*batch, now))
            found.update((row[0], Location(*row[1:])) for row in rows)
        return found

    def used(self) -> int:
        """The bytes allocated to segments: the budget in use."""
        return int(self.reader().execute("SELECT total(allocated) FROM segments").fetchone()[0])

    def insert_many(self, rows: Sequence[tuple[bytes, Location]]) -> list[bool]:
        """File appended entries in one transaction (one commit for all); for each, ``False``
        when its segment was evicted meanwhile. Which segments still exist is asked once,
        then the rows go in with one ``executemany``."""
        if not rows:
            return []
        with self._transaction() as db:
            segments = sorted({where.segment for _, where in rows})
            marks = ",".join("?" * len(segments))
            alive = {row[0] for row in db.execute(
                f"SELECT id FROM segments WHERE id IN ({marks})", segments)}  # only "?"s
            filed = [where.segment in alive for _, where in rows]
            db.executemany(_INSERT, [(key, w.segment, w.offset, w.length, w.expires)
                                           for (key, w), ok in zip(rows, filed, strict=True)
                                           if ok])
        return filed

    def forget(self, key: bytes, where: Location | None = None) -> None:
        """Delete the row of ``key`` (only if it still points at ``where``, when given)."""
        if where is None:
            self.writer().execute("DELETE FROM entries WHERE key = ?", (key,))
        else:
            self.writer().execute(
                "DELETE FROM entries WHERE key = ? AND segment = ? AND offset = ?",
                (key, where.segment, where.offset))

    def seal(self, segment: int, size: int) -> None:
        """Close ``segment`` for appending at ``size`` bytes (frees its unused allocation)."""
        self.writer().execute("UPDATE segments SET allocated = ?, open = 0 WHERE id = ?",
                              (size, segment))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.writer()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # (also when the COMMIT itself failed: disk full)
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    # -- room ----------------------------------------------------------------------------------

    def reserve(self, current: tuple[int, int, int] | None, need: int, *, chunk: int,
                segment_bytes: int, capacity: int) -> Grant:
        """:func:`.disk_room.reserve` in a transaction of its own; a segment created for a
        transaction that fails is destroyed."""
        created: list[tuple[int, str]] = []
        try:
            with self._transaction() as db:
                return disk_room.reserve(db, self._layout, current, need, chunk=chunk,
                                         segment_bytes=segment_bytes, capacity=capacity,
                                         created=created)
        except BaseException:
            for fd, path in created:  # the row was never committed
                destroy_segment(path)
                os.close(fd)
            raise

    def reclaim(self) -> None:
        """Delete pack files without a row and seal the open segments of dead writers."""
        with self._transaction() as db:
            disk_room.reclaim(db, self._layout)


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                         check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        # NORMAL: commits are not synced (a cache), yet a crash, even of the OS, leaves a
        # consistent database; entries are checked by their checksums anyway.
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT_BYTES}")
    except BaseException:
        db.close()
        raise
    return db


def _ensure_schema(db: sqlite3.Connection) -> None:
    """Create the tables in a new database; an unknown schema version is damage."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version != 0:
        raise IndexDamaged(f"index schema version {version}, expected {SCHEMA_VERSION}")
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("PRAGMA user_version").fetchone()[0] == 0:
            for statement in _SCHEMA:
                db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def _writable(root: str) -> bool:
    return os.access(root, os.W_OK)
