"""Where the disk tier keeps things, and the directory checks and scans it needs.

::

    <root>/            mode 0700, owned by the user (refused when others can write to it)
      ledger           0600: the cross-process byte count, also the flock lock file
      tmp/             0700: entries being written, ``<host>-<pid>-<token>-<size>.tmp``
      ab/abcdef...     0700 / 0600: entries, named by a hash of the caller's key

Entry names are ``blake2b(key)`` in hex, so no caller-supplied text ever reaches a path. A
temp file's name carries the bytes it reserved in the ledger and the process that writes it,
so a scan can count in-flight writes and recognise the leftovers of a killed process.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import heapq
import os
import secrets
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

_PRIVATE_DIR = 0o700
_PRIVATE_FILE = 0o600
_HEX = frozenset("0123456789abcdef")
_HOST = hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()
TMP_SUFFIX = ".tmp"


def entry_digest(name: str) -> str:
    """The hex file name of the entry for key ``name`` (any string, even NUL or ``../``)."""
    h = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=20,
                        person=b"seaweed-disk-v1")
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class EntryFile:
    """One entry found by a scan: its path, size on record and last use (mtime, ns)."""

    path: str
    size: int
    used_ns: int


@dataclass(frozen=True, slots=True)
class TempFile:
    """One in-flight (or abandoned) write found in ``tmp/``."""

    path: str
    host: str
    pid: int
    reserved: int
    mtime: float


def make_private_dir(path: str) -> None:
    """Create ``path`` with mode 0700 whatever the umask; an existing one is left alone."""
    try:
        os.mkdir(path, _PRIVATE_DIR)
    except FileExistsError:
        return
    os.chmod(path, _PRIVATE_DIR)


def open_private_file(path: str, flags: int) -> int:
    """Open (creating with mode 0600 whatever the umask) ``path``; returns the fd."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, _PRIVATE_FILE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != _PRIVATE_FILE:
            os.fchmod(fd, _PRIVATE_FILE)
    except OSError:
        os.close(fd)
        raise
    return fd


class DiskLayout:
    """Paths of one cache directory, its safety checks, and the scans used for the budget."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.tmp = os.path.join(self.root, "tmp")
        self.ledger = os.path.join(self.root, "ledger")

    def entry_path(self, name: str) -> str:
        """The file of key ``name``: ``<root>/ab/abcdef...``."""
        digest = entry_digest(name)
        return f"{self.root}/{digest[:2]}/{digest}"

    def check(self) -> tuple[str | None, str | None]:
        """Create the directory if needed and check who may use it; returns
        ``(refusal, warning)``, each ``None`` when fine.

        A directory owned by someone else or writable by group/others is refused (another
        user could plant entries); one merely readable by others gets a warning.
        """
        existed = os.path.isdir(self.root)
        os.makedirs(self.root, mode=_PRIVATE_DIR, exist_ok=True)
        if not existed:
            os.chmod(self.root, _PRIVATE_DIR)
        st = os.stat(self.root)
        if st.st_uid != os.geteuid():
            return f"{self.root} is owned by uid {st.st_uid}, not by this user", None
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o022:
            return f"{self.root} is writable by group or others (mode {mode:o})", None
        if mode & 0o077:
            return None, f"{self.root} is readable by group or others (mode {mode:o}); " \
                         f"chmod 700 it to keep cached data private"
        return None, None

    def create_tree(self) -> None:
        """Create ``tmp/`` and the ledger file (private) inside a checked root."""
        make_private_dir(self.tmp)
        os.close(open_private_file(self.ledger, os.O_RDWR))

    def new_temp(self, reserved: int) -> str:
        """A fresh temp path for a write that reserved ``reserved`` bytes."""
        token = secrets.token_hex(6)
        return os.path.join(self.tmp, f"{_HOST}-{os.getpid()}-{token}-{reserved}{TMP_SUFFIX}")

    def ensure_subdir(self, entry_path: str) -> None:
        """Create the fan-out directory of ``entry_path`` (mode 0700)."""
        make_private_dir(os.path.dirname(entry_path))

    def iter_entries(self) -> Iterator[EntryFile]:
        """Every entry file with its size and last-use time (one stat per file)."""
        for sub in _scandir(self.root):
            if len(sub.name) != 2 or not _is_hex(sub.name) or not sub.is_dir(
                    follow_symlinks=False):
                continue
            for item in _scandir(sub.path):
                if not _is_hex(item.name):
                    continue
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield EntryFile(item.path, st.st_size, st.st_mtime_ns)

    def oldest_entries(self, max_bytes: int, max_count: int) -> list[EntryFile]:
        """The least recently used entries, oldest first, adding up to at least ``max_bytes``
        (when there are that many) but holding no more than ``max_count`` of them; memory stays
        bounded by ``max_count`` whatever the size of the directory."""
        newest_first: list[tuple[int, int, EntryFile]] = []  # a max-heap on last use
        total = 0
        for n, entry in enumerate(self.iter_entries()):
            heapq.heappush(newest_first, (-entry.used_ns, n, entry))
            total += entry.size
            while newest_first and (len(newest_first) > max_count
                                    or total - newest_first[0][2].size >= max_bytes):
                total -= heapq.heappop(newest_first)[2].size
        return [entry for _, _, entry in sorted(newest_first, reverse=True)]

    def scan_temps(self) -> list[TempFile]:
        """Every temp file whose name parses (others are ignored)."""
        found: list[TempFile] = []
        for item in _scandir(self.tmp):
            parsed = _parse_temp_name(item.name)
            if parsed is None:
                continue
            with contextlib.suppress(FileNotFoundError):
                mtime = item.stat(follow_symlinks=False).st_mtime
                found.append(TempFile(item.path, parsed[0], parsed[1], parsed[2], mtime))
        return found


def temp_is_abandoned(temp: TempFile, stale_seconds: float, now: float | None = None) -> bool:
    """Whether ``temp`` can no longer be finished: older than ``stale_seconds`` or written by a
    process of this host that has exited."""
    if (time.time() if now is None else now) - temp.mtime > stale_seconds:
        return True
    return temp.host == _HOST and temp.pid != os.getpid() and not _pid_alive(temp.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as exc:  # EPERM: it exists but belongs to someone else
        return exc.errno == errno.EPERM
    return True


def _parse_temp_name(name: str) -> tuple[str, int, int] | None:
    if not name.endswith(TMP_SUFFIX):
        return None
    parts = name[: -len(TMP_SUFFIX)].split("-")
    if len(parts) != 4 or not parts[1].isdigit() or not parts[3].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[3])


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in _HEX for c in text)


def _scandir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []
