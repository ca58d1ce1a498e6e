"""The disk tier's byte budget, shared by every process that uses one cache directory.

The ``ledger`` file holds one number: the bytes of all entries plus the bytes reserved by writes
in flight. Every change happens under an exclusive ``flock`` on that file (and a thread lock,
since a flock is shared by the threads of a process):

- :meth:`Ledger.reserve` makes room (evicting least recently used entries when needed), adds the
  entry's size and creates its temp file, all before the payload is written; so the directory
  never holds more than the budget, even with many processes writing at once.
- :meth:`Ledger.commit` renames the temp file into place and subtracts the size of the entry it
  replaced; :meth:`Ledger.release` gives back a failed write's reservation.

Eviction is least recently used first, by the entries' mtime (a hit touches its file, so all
processes see the same recency). The oldest entries are found by a scan done *outside* the lock
and kept as a bounded candidate list; under the lock each candidate is checked (still there,
not touched since) before it is deleted, and ``capacity * evict_fraction`` extra bytes are freed
each time, so scans are amortized over many puts and never hold up other processes' writes.
The ledger is recounted under the lock only when it is missing or damaged, when a damaged entry
of the wrong size was deleted, or as a last resort when nothing else makes room; between
recounts it can only drift upward (a process killed between two steps), which costs some
capacity, never the budget.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from .disk_layout import DiskLayout, EntryFile, open_private_file, temp_is_abandoned

_LEDGER = struct.Struct("<8sq")
_LEDGER_MAGIC = b"SWDLEDG1"
_MAX_CANDIDATES = 50_000  # eviction candidates one process remembers between scans


@dataclass(frozen=True, slots=True)
class Reservation:
    """Room for one entry: an open temp file (fd) to write it to, and what was evicted."""

    fd: int
    temp_path: str
    size: int
    evicted: int


class Ledger:
    """Cross-process byte accounting and eviction for one :class:`DiskLayout`."""

    def __init__(self, layout: DiskLayout, capacity: int, *, evict_fraction: float,
                 stale_tmp_seconds: float) -> None:
        self._layout = layout
        self._capacity = capacity
        self._slack = int(capacity * evict_fraction)
        self._stale = stale_tmp_seconds
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._swept = False
        self._closed = False
        self._candidates: collections.deque[EntryFile] = collections.deque()

    def after_fork(self) -> None:
        """In a forked child: drop the inherited fd (its flock belongs to the parent)."""
        self._thread_lock = threading.Lock()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._swept = False
        self._candidates.clear()

    def __del__(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def close(self, *, reopen: bool = False) -> None:
        """Close the ledger file; with ``reopen`` it is opened again on the next use (after the
        directory was removed under us), otherwise later uses raise ``OSError(EBADF)``."""
        with self._thread_lock:
            self._closed = not reopen
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def used(self) -> int:
        """The bytes on record (entries plus reservations)."""
        with self._locked() as fd:
            used = _read(fd)
            return used if used is not None else self._reconcile(fd, 0)[0]

    def reserve(self, size: int) -> Reservation | None:
        """Make room for and reserve ``size`` bytes; ``None`` when it cannot fit.

        Eviction candidates come from a scan done *outside* the lock (so other processes'
        writes are not held up by it); the locked recount is the last resort.
        """
        evicted = 0
        for last_try in (False, True):
            with self._locked() as fd:
                used, freed = self._make_room(fd, size, recount=last_try)
                evicted += freed
                if used + size <= self._capacity:
                    # Recorded before the temp file exists: a writer killed in between
                    # leaves the ledger high (a recount fixes that), never low.
                    _write(fd, used + size)
                    temp = self._layout.new_temp(size)
                    try:
                        temp_fd = open_private_file(temp, os.O_WRONLY | os.O_EXCL)
                    except OSError:
                        _write(fd, used)
                        raise
                    return Reservation(temp_fd, temp, size, evicted)
            if not last_try:
                self._refill_candidates(size)
        return None

    def _make_room(self, fd: int, size: int, *, recount: bool) -> tuple[int, int]:
        """Bring the ledger up to date and evict for ``size`` more bytes if needed; returns
        ``(bytes used, entries evicted)``."""
        used = _read(fd)
        if used is not None and not self._swept:
            used = self._sweep_temps(fd, used)
        self._swept = True
        if used is None:
            used, evicted = self._reconcile(fd, size)
            return used, evicted
        evicted = 0
        if used + size > self._capacity:
            used, evicted = self._evict_candidates(fd, used, size)
        if used + size > self._capacity and recount:
            used, more = self._reconcile(fd, size)
            evicted += more
        return used, evicted

    def commit(self, reservation: Reservation, entry_path: str) -> bool:
        """Move a fully written temp file into place (atomically replacing any old entry).

        ``False`` when the temp file is gone: another process judged it abandoned (a write
        slower than ``stale_tmp_seconds``) and already took its bytes off the ledger.
        """
        with self._locked() as fd:
            replaced = _size_or_zero(entry_path)
            try:
                os.replace(reservation.temp_path, entry_path)
            except FileNotFoundError:
                if not os.path.exists(reservation.temp_path):
                    return False
                self._layout.ensure_subdir(entry_path)
                os.replace(reservation.temp_path, entry_path)
            if replaced:
                _adjust(fd, -replaced)
            return True

    def release(self, reservation: Reservation) -> None:
        """Undo a reservation whose write failed; deletes its temp file."""
        with self._locked() as fd:
            try:
                os.unlink(reservation.temp_path)
            except FileNotFoundError:
                return  # swept as abandoned: its bytes were already given back
            _adjust(fd, -reservation.size)

    def discard(self, path: str, inode: int | None = None, *, recount: bool = False) -> bool:
        """Delete the entry at ``path`` (only if it is still ``inode``, when given).

        ``recount`` (for a damaged entry, whose size may not be the one on record) marks the
        ledger for a recount by the next reservation instead of subtracting.
        """
        with self._locked() as fd:
            try:
                st = os.stat(path, follow_symlinks=False)
                if inode is not None and st.st_ino != inode:
                    return False
                os.unlink(path)
            except FileNotFoundError:
                return False
            if recount:
                os.pwrite(fd, bytes(_LEDGER.size), 0)
            else:
                _adjust(fd, -st.st_size)
            return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        with self._thread_lock:
            if self._closed:
                raise OSError(errno.EBADF, "the disk cache is closed")
            if self._fd is None:
                self._fd = open_private_file(self._layout.ledger, os.O_RDWR)
            fd = self._fd
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield fd
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _sweep_temps(self, fd: int, used: int) -> int:
        """Delete abandoned temp files (a killed writer's), giving back their reservations."""
        swept = used
        for temp in self._layout.scan_temps():
            if temp_is_abandoned(temp, self._stale):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp.path)
                    swept -= temp.reserved
        if swept != used:
            _write(fd, swept)
        return max(swept, 0)

    def _refill_candidates(self, incoming: int) -> None:
        """Scan for the least recently used entries worth ``2 * slack + incoming`` bytes."""
        wanted = 2 * self._slack + incoming
        self._candidates = collections.deque(
            self._layout.oldest_entries(wanted, _MAX_CANDIDATES))

    def _evict_candidates(self, fd: int, used: int, incoming: int) -> tuple[int, int]:
        """Delete candidates, oldest first, until ``incoming`` more bytes fit with ``slack`` to
        spare; a candidate used (touched) or rewritten since the scan is skipped."""
        target = self._capacity - self._slack - incoming
        evicted = 0
        while used > target and self._candidates:
            candidate = self._candidates.popleft()
            try:
                st = os.stat(candidate.path, follow_symlinks=False)
                if st.st_mtime_ns != candidate.used_ns:
                    continue
                os.unlink(candidate.path)
            except FileNotFoundError:
                continue  # evicted or discarded by another process
            used -= st.st_size
            evicted += 1
        if evicted:
            _write(fd, used)
        return used, evicted

    def _reconcile(self, fd: int, incoming: int) -> tuple[int, int]:
        """Recount the directory under the lock (a damaged ledger, or one that drifted up);
        evict if over. Returns ``(bytes used, entries evicted)``."""
        in_flight = 0
        for temp in self._layout.scan_temps():
            if temp_is_abandoned(temp, self._stale):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp.path)
            else:
                in_flight += temp.reserved
        used = in_flight + sum(e.size for e in self._layout.iter_entries())
        _write(fd, used)
        if used + incoming <= self._capacity:
            return used, 0
        self._refill_candidates(incoming + used - self._capacity)
        return self._evict_candidates(fd, used, incoming)


def _read(fd: int) -> int | None:
    raw = os.pread(fd, _LEDGER.size, 0)
    if len(raw) != _LEDGER.size:
        return None
    magic, used = _LEDGER.unpack(raw)
    return int(used) if magic == _LEDGER_MAGIC and used >= 0 else None


def _write(fd: int, used: int) -> None:
    os.pwrite(fd, _LEDGER.pack(_LEDGER_MAGIC, max(used, 0)), 0)


def _adjust(fd: int, delta: int) -> None:
    used = _read(fd)
    if used is not None:  # a damaged ledger is recounted at the next reservation
        _write(fd, used + delta)


def _size_or_zero(path: str) -> int:
    try:
        return os.stat(path, follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0
