"""The disk tier's byte budget, shared by every process that uses one cache directory.

The ``ledger`` file holds one number: the bytes of all entries plus the bytes reserved by writes
in flight. Every change happens under an exclusive ``flock`` on that file (and a thread lock,
since a flock is shared by the threads of a process):

- :meth:`Ledger.reserve` makes room (evicting least recently used entries when needed), adds the
  entry's size and creates its temp file, all before the payload is written; so the directory
  never holds more than the budget, even with many processes writing at once.
- :meth:`Ledger.commit` renames the temp file into place and subtracts the size of the entry it
  replaced; :meth:`Ledger.release` gives back a failed write's reservation.

The directory is only scanned when the budget is exceeded (then it evicts down to
``capacity * (1 - evict_fraction)``, so scans are amortized over many puts) or when the ledger
is missing or damaged. A scan recomputes the number exactly; between scans it can only drift
upward (a process killed between two steps), which costs some capacity until the next scan,
never the budget.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from .disk_layout import DiskLayout, open_private_file, temp_is_abandoned

_LEDGER = struct.Struct("<8sq")
_LEDGER_MAGIC = b"SWDLEDG1"


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

    def after_fork(self) -> None:
        """In a forked child: drop the inherited fd (its flock belongs to the parent)."""
        self._thread_lock = threading.Lock()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._swept = False

    def __del__(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def close(self) -> None:
        """Close the ledger file (reopened on the next use)."""
        with self._thread_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def used(self) -> int:
        """The bytes on record (entries plus reservations)."""
        with self._locked() as fd:
            used = _read(fd)
            return used if used is not None else self._reconcile(fd, 0)[0]

    def reserve(self, size: int) -> Reservation | None:
        """Make room for and reserve ``size`` bytes; ``None`` when it cannot fit."""
        with self._locked() as fd:
            used = _read(fd)
            evicted = 0
            if used is not None and not self._swept:
                used = self._sweep_temps(used)
            if used is None or used + size > self._capacity:
                used, evicted = self._reconcile(fd, size)
            self._swept = True
            if used + size > self._capacity:
                return None
            temp = self._layout.new_temp(size)
            temp_fd = open_private_file(temp, os.O_WRONLY | os.O_EXCL)
            _write(fd, used + size)
            return Reservation(temp_fd, temp, size, evicted)

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
            if self._fd is None:
                self._fd = open_private_file(self._layout.ledger, os.O_RDWR)
            fd = self._fd
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield fd
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _sweep_temps(self, used: int) -> int:
        """Delete abandoned temp files (a killed writer's), returning their reservations."""
        for temp in self._layout.scan_temps():
            if temp_is_abandoned(temp, self._stale):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp.path)
                    used -= temp.reserved
        return max(used, 0)

    def _reconcile(self, fd: int, incoming: int) -> tuple[int, int]:
        """Recount the directory; evict least recently used entries until ``incoming`` more
        bytes fit with ``slack`` to spare. Returns ``(bytes used, entries evicted)``."""
        in_flight = 0
        for temp in self._layout.scan_temps():
            if temp_is_abandoned(temp, self._stale):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp.path)
            else:
                in_flight += temp.reserved
        entries = self._layout.scan_entries()
        used = in_flight + sum(e.size for e in entries)
        evicted = 0
        if used + incoming > self._capacity:
            target = self._capacity - self._slack - incoming
            for entry in sorted(entries, key=lambda e: e.used_ns):
                if used <= target:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    evicted += 1
                used -= entry.size
        _write(fd, used)
        return used, evicted


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
