"""Segment files of the disk tier: the pack files entries are appended to.

A segment is written by one process at a time, which holds an exclusive ``flock`` on it for as
long as it may append: a segment whose lock can be taken by someone else belongs to nobody (its
writer exited or was killed) and may be sealed or evicted. Segments are destroyed by
unlinking them and *then* truncating them through an fd, so the space comes back at once even
while other processes still hold the file open for reading, and a reader that finds fewer
bytes than the index promised can tell an eviction (no links left) from damage.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from .disk_format import (
    HEADER_SIZE,
    EntryFormatError,
    decode_entry,
    decode_header,
    verify_payload,
)
from .disk_layout import DiskLayout, open_private_file

logger = logging.getLogger(__name__)

_ONE_READ_BYTES = 256 << 10  # larger entries are read in two preads (no copy of the payload)


def new_segment_id() -> int:
    """A fresh segment id: microseconds since the epoch and 10 random bits, so ids sort by
    creation time and an id is never used twice, even after the index was reset."""
    return (time.time_ns() // 1000) << 10 | secrets.randbits(10)


@dataclass(slots=True)
class OpenSegment:
    """The segment this process appends to: its write fd (holding the flock), where the next
    entry goes, and how far the index lets it grow."""

    id: int
    fd: int
    offset: int
    allocated: int


def create_segment(path: str) -> int:
    """Create the pack file ``path`` and lock it for appending; returns its fd."""
    fd = open_private_file(path, os.O_RDWR | os.O_EXCL)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def is_abandoned(path: str) -> bool:
    """Whether no process holds the segment at ``path`` for appending (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    finally:
        os.close(fd)  # (also releases the lock we may have taken)
    return True


def segment_size(path: str) -> int | None:
    """The bytes in the pack file at ``path``; ``None`` when it is gone."""
    try:
        return os.stat(path, follow_symlinks=False).st_size
    except FileNotFoundError:
        return None


def destroy_segment(path: str) -> None:
    """Delete a pack file and free its space now, whoever still has it open."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        os.unlink(path)
        os.ftruncate(fd, 0)
    except FileNotFoundError:
        pass  # destroyed by someone else meanwhile
    finally:
        os.close(fd)


def was_destroyed(fd: int) -> bool:
    """Whether the pack file open as ``fd`` has been unlinked (evicted or reset)."""
    try:
        return os.fstat(fd).st_nlink == 0
    except OSError:
        return True


def read_entry(fd: int, offset: int, length: int, key: bytes) -> bytes:
    """The payload of the entry of ``length`` bytes at ``offset``, verified;
    :class:`EntryFormatError` when it is not the whole entry written for ``key``."""
    if length <= _ONE_READ_BYTES:
        return decode_entry(os.pread(fd, length, offset), key)[0]
    header = decode_header(os.pread(fd, HEADER_SIZE, offset))
    if HEADER_SIZE + header.length != length:
        raise EntryFormatError(f"the index says {length} bytes, the header "
                               f"{HEADER_SIZE + header.length}")
    payload = os.pread(fd, header.length, offset + HEADER_SIZE)
    verify_payload(header, payload, key)
    return payload


class ReadFds:
    """Read-only fds of recently read segments, at most ``limit`` open (least recently used
    closed first). Not thread-safe: the caller holds a lock."""

    def __init__(self, limit: int = 128) -> None:
        self._limit = limit
        self._fds: OrderedDict[int, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._fds)

    def __del__(self) -> None:  # a tier dropped without close()
        self.close_all()

    def get(self, segment: int, layout: DiskLayout) -> int:
        """The fd of ``segment`` (opened if needed); ``FileNotFoundError`` when the segment
        is gone."""
        fd = self._fds.get(segment)
        if fd is not None:
            self._fds.move_to_end(segment)
            return fd
        fd = os.open(layout.segment_path(segment), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        self._fds[segment] = fd
        while len(self._fds) > self._limit:
            with contextlib.suppress(OSError):
                os.close(self._fds.popitem(last=False)[1])
        return fd

    def read(self, layout: DiskLayout, segment: int, offset: int, length: int,
             key: bytes) -> bytes | str | None:
        """The verified payload of ``key``'s entry at ``offset`` of ``segment``; ``"corrupt"``
        when it is damaged, ``"error"`` when the segment cannot be read, ``None`` when it was
        evicted (before or while we read)."""
        try:
            fd = self.get(segment, layout)
            return read_entry(fd, offset, length, key)
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.debug("disk cache: cannot read segment %x: %s", segment, exc)
            return "error"
        except EntryFormatError as exc:
            if was_destroyed(fd):  # evicted while we read: a miss, not damage
                self.drop(segment)
                return None
            logger.warning("disk cache: dropping a damaged entry of segment %x at %d: %s",
                           segment, offset, exc)
            return "corrupt"

    def drop(self, segment: int) -> None:
        """Close the fd of ``segment`` if one is open."""
        fd = self._fds.pop(segment, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close_all(self) -> None:
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.popitem()[1])
