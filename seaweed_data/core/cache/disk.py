"""The disk tier: a byte-bounded cache directory shared by every process of a node.

DataLoader workers and the ranks of one node share one directory safely:

- an entry is written to ``tmp/`` and renamed into place, so a reader sees a whole entry or none,
  and a writer killed halfway leaves only a temp file, which is never read and is deleted once
  its process is gone (or it is older than ``stale_tmp_seconds``);
- every entry carries a header with its length, optional expiry and a checksum
  (:mod:`.disk_format`); a damaged, truncated or expired entry is deleted and read as a miss;
- the byte budget is kept in a ledger under ``flock`` (:mod:`.disk_ledger`): room is reserved
  before a write, so the directory never exceeds ``capacity_bytes``, whatever the number of
  writers; least recently used entries are evicted, and recency is shared across processes
  through the files' mtime (a hit touches the file, at most once a second);
- files are 0600 and directories 0700 whatever the umask, names are hashes of the keys;
- a full disk (ENOSPC, EDQUOT) or a read-only or unusable directory turns writing off with one
  warning; reads of what is there keep working.

The methods are synchronous and cheap for small entries (one open, fstat, two reads and close
per hit; no directory scans outside eviction); call them from a worker thread in async code.
Nothing is held across ``fork``: the child drops the inherited ledger fd and locks.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence

from .disk_format import (
    HEADER_SIZE,
    EntryFormatError,
    decode_header,
    encode_header,
    verify_payload,
)
from .disk_layout import DiskLayout
from .disk_ledger import Ledger, Reservation

logger = logging.getLogger(__name__)

_DISABLING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                               errno.EPERM})
_TOUCH_INTERVAL_S = 1.0
_STAT_KEYS = ("hits", "misses", "writes", "corrupt", "expired", "evictions", "errors",
              "rejected", "bytes_read", "bytes_written")
_LIVE: weakref.WeakSet[DiskTier] = weakref.WeakSet()


def _write_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    """Write every byte of ``parts`` to ``fd`` (the one low-level write; tests inject faults)."""
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        written = os.writev(fd, views)
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _read_exact(fd: int, length: int) -> bytes:
    """``length`` bytes from ``fd``; raises :class:`EntryFormatError` on a short file."""
    data = os.read(fd, length)
    if len(data) == length:
        return data
    chunks = [data]
    got = len(data)
    while got < length:
        more = os.read(fd, length - got)
        if not more:
            raise EntryFormatError(f"truncated payload ({got} of {length} bytes)")
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


class DiskTier:
    """A cache directory of ``capacity_bytes`` at most, shared by the node's processes.

    ``name`` keys are opaque strings (e.g. :attr:`BlockKey.digest`); they are hashed again for
    the file name. ``capacity_bytes`` counts whole files (a 28-byte header plus the payload).
    ``evict_fraction`` of the capacity is freed at once when full, so eviction scans are rare.
    ``clock`` gives the time used for expiry (seconds since the epoch). The constructor does no
    I/O; the directory is created and checked on first use.
    """

    def __init__(self, directory: str | os.PathLike[str], capacity_bytes: int, *,
                 evict_fraction: float = 0.05, stale_tmp_seconds: float = 600.0,
                 clock: Callable[[], float] = time.time) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        if not 0.0 <= evict_fraction < 1.0:
            raise ValueError(f"evict_fraction must be in [0, 1), got {evict_fraction}")
        self._layout = DiskLayout(os.fspath(directory))
        self._capacity = capacity_bytes
        self._clock = clock
        self._ledger = Ledger(self._layout, capacity_bytes, evict_fraction=evict_fraction,
                              stale_tmp_seconds=stale_tmp_seconds)
        self._mutex = threading.RLock()
        self._ready = False
        self._writable = True
        self._closed = False
        self._stats = dict.fromkeys(_STAT_KEYS, 0)
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"DiskTier({self._layout.root!r}, capacity_bytes={self._capacity})"

    @property
    def directory(self) -> str:
        """The absolute path of the cache directory."""
        return self._layout.root

    @property
    def capacity_bytes(self) -> int:
        """The byte budget of the whole directory."""
        return self._capacity

    @property
    def enabled(self) -> bool:
        """Whether puts are accepted (false after ENOSPC, on an unusable directory, or closed)."""
        return self._ensure_ready() and self._writable

    def get(self, name: str) -> bytes | None:
        """The payload stored for ``name``, or ``None`` on a miss (damaged and expired entries
        are deleted and read as misses)."""
        if not self._ensure_ready():
            return None
        path = self._layout.entry_path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            self._count("misses")
            return None
        except OSError as exc:
            self._count("misses", "errors")
            logger.debug("disk cache: cannot open %s: %s", path, exc)
            return None
        try:
            payload = self._read_entry(fd, path)
        finally:
            os.close(fd)
        self._count("hits" if payload is not None else "misses",
                    bytes_read=len(payload) if payload is not None else 0)
        return payload

    def put(self, name: str, data: bytes | bytearray | memoryview, *,
            expires_at: float | None = None) -> bool:
        """Store ``data`` under ``name``, replacing any older entry atomically. ``False`` when it
        was not stored: tier disabled, entry larger than the capacity, no room left (all of it
        reserved by writes in flight), already expired, or an I/O error."""
        if not self.enabled:
            return False
        view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
        if expires_at is not None and (math.isnan(expires_at) or expires_at <= self._clock()):
            return False
        header = encode_header(view, expires_at)
        size = HEADER_SIZE + view.nbytes
        if size > self._capacity:
            self._count("rejected")
            return False
        try:
            reservation = self._ledger.reserve(size)
        except OSError as exc:
            self._fail("reserving room", exc)
            return False
        if reservation is None:
            self._count("rejected")
            return False
        if reservation.evicted:
            self._count(evictions=reservation.evicted)
        return self._write(reservation, self._layout.entry_path(name), header, view)

    def remove(self, name: str) -> None:
        """Delete the entry of ``name`` if there is one."""
        if self._ensure_ready():
            try:
                self._ledger.discard(self._layout.entry_path(name))
            except OSError as exc:
                self._count("errors")
                logger.debug("disk cache: cannot remove an entry: %s", exc)

    def __contains__(self, name: object) -> bool:
        """Whether an unexpired entry of the right size is stored (the checksum is not read)."""
        if not isinstance(name, str) or not self._ensure_ready():
            return False
        try:
            fd = os.open(self._layout.entry_path(name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            header = decode_header(os.read(fd, HEADER_SIZE), os.fstat(fd).st_size)
        except (OSError, EntryFormatError):
            return False
        finally:
            os.close(fd)
        return header.expires_at is None or header.expires_at > self._clock()

    def has(self, name: str) -> bool:
        """Whether a file is stored for ``name``: one ``stat``, nothing read or verified (a
        cheap guess for prefetching; :meth:`get` still checks the entry)."""
        if not self._ensure_ready():
            return False
        try:
            return os.stat(self._layout.entry_path(name)).st_size > HEADER_SIZE
        except OSError:
            return False

    def used_bytes(self) -> int:
        """Bytes in the directory as accounted by all its processes (entries and writes in
        flight); 0 when the tier is unusable."""
        if not self._ensure_ready():
            return 0
        try:
            return self._ledger.used()
        except OSError as exc:
            self._count("errors")
            logger.debug("disk cache: cannot read the ledger: %s", exc)
            return 0

    def stats(self) -> dict[str, int]:
        """This process's counters (reset in a forked child) plus ``bytes`` (used_bytes) and
        ``capacity``."""
        with self._mutex:
            out = dict(self._stats)
        out["bytes"] = self.used_bytes()
        out["capacity"] = self._capacity
        return out

    def close(self) -> None:
        """Release the ledger fd; afterwards gets miss and puts return ``False``."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._ledger.close()

    def _ensure_ready(self) -> bool:
        # (a forked child is reset by the at-fork hook below, not by a getpid() per call)
        if self._closed:
            return False
        if self._ready:
            return True
        with self._mutex:
            if not self._ready:
                self._prepare()
        return self._ready

    def _prepare(self) -> None:
        """Create and check the directory; a refused one turns the tier off, an unwritable one
        (read-only filesystem, full disk) leaves it reading what is there."""
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
        except OSError as exc:
            self._fail("preparing the directory", exc)
        self._ready = True

    def _after_fork(self) -> None:
        """Forget everything tied to the parent process (locks, ledger fd, counters)."""
        self._mutex = threading.RLock()
        self._ledger.after_fork()
        self._stats = dict.fromkeys(_STAT_KEYS, 0)

    def _read_entry(self, fd: int, path: str) -> bytes | None:
        """Read and check an open entry; deletes it when damaged or expired."""
        st = os.fstat(fd)
        header = None
        try:
            header = decode_header(os.read(fd, HEADER_SIZE), st.st_size)
            payload = _read_exact(fd, header.length)
            verify_payload(header, payload)
        except EntryFormatError as exc:
            logger.warning("disk cache: deleting damaged entry %s: %s", path, exc)
            # a file whose size is not the one written is recounted rather than subtracted
            self._drop(path, st.st_ino, "corrupt", recount=header is None)
            return None
        except OSError as exc:
            self._count("errors")
            logger.debug("disk cache: cannot read %s: %s", path, exc)
            return None
        if header.expires_at is not None and header.expires_at <= self._clock():
            self._drop(path, st.st_ino, "expired")
            return None
        if time.time() - st.st_mtime > _TOUCH_INTERVAL_S:
            with contextlib.suppress(OSError):  # recency for LRU eviction, across processes
                os.utime(fd)
        return payload

    def _drop(self, path: str, inode: int, counter: str, *, recount: bool = False) -> None:
        self._count(counter)
        try:
            self._ledger.discard(path, inode, recount=recount)
        except OSError as exc:
            self._count("errors")
            logger.debug("disk cache: cannot delete %s: %s", path, exc)

    def _write(self, reservation: Reservation, path: str, header: bytes,
               view: memoryview) -> bool:
        try:
            try:
                _write_all(reservation.fd, (header, view))
            finally:
                os.close(reservation.fd)
            stored = self._ledger.commit(reservation, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._ledger.release(reservation)
            self._fail("writing an entry", exc)
            return False
        if not stored:
            self._count("errors")
            return False
        self._count("writes", bytes_written=view.nbytes)
        return True

    def _fail(self, what: str, exc: OSError) -> None:
        """Count an I/O error; a full disk or unwritable directory turns writing off."""
        self._count("errors")
        if exc.errno in _DISABLING_ERRNOS:
            with self._mutex:
                first, self._writable = self._writable, False
            if first:
                logger.warning("disk cache %s: writing disabled after %s: %s; cached entries "
                               "are still read", self._layout.root, what, exc)
        elif isinstance(exc, FileNotFoundError):  # the directory was removed under us
            self._ready = False
            with contextlib.suppress(OSError):
                self._ledger.close(reopen=True)
        else:
            logger.debug("disk cache: error %s: %s", what, exc)

    def _count(self, *names: str, **amounts: int) -> None:
        with self._mutex:
            for name in names:
                self._stats[name] += 1
            for name, amount in amounts.items():
                self._stats[name] += amount


def _after_fork_in_child() -> None:
    for tier in list(_LIVE):
        tier._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
