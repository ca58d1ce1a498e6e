"""Where the disk tier keeps things, and the checks of the directory it is given.

::

    <root>/              mode 0700, owned by the user (refused when others can write to it)
      index.db           0600: the SQLite index (key -> segment, offset, length, expiry) and
                         the segments with their byte allocations; plus its -wal and -shm files
      lock               0600: flock'ed shared while connecting, exclusive while the index is
                         reset after corruption
      packs/             0700
        <id>.pack        0600: one segment, entries appended back to back; ``id`` is 16 hex
                         digits, time-ordered and never reused

Keys reach the index only as ``blake2b(key)`` digests and file names are segment ids, so no
caller-supplied text ever reaches a path or the index.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat

from .keys import remember

_PRIVATE_DIR = 0o700
_PRIVATE_FILE = 0o600
_PACK_NAME = re.compile(r"^[0-9a-f]{16}\.pack$")
_LEGACY_DIR = re.compile(r"^[0-9a-f]{2}$")


DISK_KEY_BYTES = 20
"""The length of an index key (:func:`entry_key`)."""


def entry_key(name: str) -> bytes:
    """The index key of ``name`` (any string, even NUL, ``../`` or a lone surrogate);
    remembered like :attr:`BlockKey.digest <.keys.BlockKey.digest>`."""
    key = _ENTRY_KEYS.get(name)
    if key is None:
        key = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=DISK_KEY_BYTES,
                              person=b"seaweed-disk-v2").digest()
        remember(_ENTRY_KEYS, name, key)
    return key


_ENTRY_KEYS: dict[str, bytes] = {}


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
    """Paths of one cache directory and its safety checks."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.packs = os.path.join(self.root, "packs")
        self.index = os.path.join(self.root, "index.db")
        self.lock = os.path.join(self.root, "lock")

    def segment_path(self, segment: int) -> str:
        """The pack file of segment ``segment``."""
        return f"{self.packs}/{segment:016x}.pack"

    def segment_files(self) -> dict[int, str]:
        """Every pack file in ``packs/`` by segment id (other names are ignored)."""
        try:
            with os.scandir(self.packs) as it:
                return {int(item.name[:16], 16): item.path for item in it
                        if _PACK_NAME.match(item.name)}
        except (FileNotFoundError, NotADirectoryError):
            return {}

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
        """Create ``packs/`` and the lock file (private) inside a checked root."""
        make_private_dir(self.packs)
        os.close(open_private_file(self.lock, os.O_RDWR))

    def remove_legacy(self) -> bool:
        """Delete a cache of the former file-per-entry layout (``ledger``, ``tmp/``, ``ab/``
        fan-out directories), whose bytes the index would never count; ``True`` if found."""
        ledger = os.path.join(self.root, "ledger")
        if not os.path.exists(ledger):
            return False
        for item in os.listdir(self.root):
            if item == "tmp" or _LEGACY_DIR.match(item):
                shutil.rmtree(os.path.join(self.root, item), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ledger)
        return True
