"""Cache keys: what a cached block is, and which dataset item it belongs to."""

from __future__ import annotations

import hashlib
from typing import NamedTuple, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BlockKey(NamedTuple):
    """Bytes ``[start, stop)`` of one version of one file.

    ``item`` is what prefetch hints and the eviction policy talk about (the file's path): all
    blocks of a file share its next use. ``version`` is the file's content identity
    (:attr:`Entry.version`: chunk ids, size, mtime), so a rewritten file never hits an old
    block.

    A tuple of strings and ints: the garbage collector stops tracking it after its first
    look, so the keys a cache holds (tens of thousands in a DataLoader worker) never make it
    run a full collection.
    """

    item: str
    version: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def digest(self) -> str:
        """A fixed-length hex name for this block (disk file names, logs without paths).

        Remembered for the last :data:`MEMO_SIZE` or so keys: a block's digest is needed
        when the disk is asked about it and again when it is read or stored."""
        name = _DIGESTS.get(self)
        if name is None:
            h = hashlib.blake2b(digest_size=20)
            h.update(f"{self.item}\0{self.version}\0{self.start}\0{self.stop}".encode())
            name = h.hexdigest()
            remember(_DIGESTS, self, name)
        return name


MEMO_SIZE = 8192
"""Entries a hash memo keeps at most, then it starts over (~1-2 MB): enough for the few
hundred blocks between the disk being asked about a block and the block's read or store."""
_DIGESTS: dict[BlockKey, str] = {}


def remember(memo: dict[K, V], key: K, value: V) -> None:
    """Put ``key`` in a hash memo, emptying it first when full (any thread: a race only
    costs a hash computed twice)."""
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = value
