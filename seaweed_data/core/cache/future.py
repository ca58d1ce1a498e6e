"""Future-aware eviction: Belady's MIN driven by the known future access order.

A training loop knows the order in which it will read its items (this epoch's remaining order
and, with a seeded sampler, the next epoch's). With that order the optimal replacement is known:
evict the entry whose next use is farthest away, and do not admit a newcomer whose next use is
farther than that of everything cached. With no hints at all the policy is plain LRU.

Data structures (every operation O(log n) amortised, no scans per access). A worker holds tens
of thousands of hints and replaces or extends them every epoch, so they are plain lists of
``str`` and ``int`` and dicts of them, and the cached blocks of an item are a tuple: no mutable
container per item, which would feed Python's cyclic garbage collector (a full collection
costs a DataLoader worker ~0.1 s).

- ``_stream``: the hint stream; ``_stream[_head]`` is the item at the cursor, the cursor being
  the absolute position of the head, so positions never need renumbering. The part behind the
  head is trimmed now and then.
- ``_following``: per stream slot, the absolute position of the same item's next occurrence
  (-1 for none), so passing an occurrence finds the next one in O(1).
- ``_next``: per item, its next use (its first occurrence at or after the cursor); ``_last``:
  its last occurrence, to link the occurrences appended by :meth:`extend_future`.
- a max-heap of ``-next_use`` over the cached items with a known next use; an entry names its
  item through the stream (the item at that position) and counts while the position is ahead
  of the cursor and the item is cached. Passing a next use re-pushes the item, so the heap
  never holds a stale "too soon" value unnoticed.
- ``_unhinted``: cached items with no known next use, least recently used first; they are
  evicted before anything with a next use.

Telling the same future again with more of it (a DataLoader worker's hints at each epoch:
this epoch, which the previous call already announced as the next one, and the next one)
only appends the new part.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

from seaweed_data.core.cache.keys import BlockKey
from seaweed_data.core.cache.policy import RecencyOrder

NEVER = float("inf")  # the next use of an item with no hint ahead of the cursor
TRIM_AFTER = 4096  # consumed hints kept before the stream's head is trimmed


class FutureAwareEviction:
    """Belady's MIN over the hint stream, with admission control and an LRU fallback."""

    name = "future"

    def __init__(self) -> None:
        self._stream: list[str] = []
        self._following: list[int] = []
        self._head = 0
        self._cursor = 0
        self._next: dict[str, int] = {}
        self._last: dict[str, int] = {}
        self._keys: dict[str, tuple[BlockKey, ...]] = {}  # cached blocks per item
        self._unhinted: dict[str, None] = {}
        self._heap: list[int] = []

    # -- hints -------------------------------------------------------------------------------

    @property
    def cursor(self) -> int:
        """How many hints the consumer has moved past since this policy was created."""
        return self._cursor

    @property
    def remaining_hints(self) -> int:
        """Hints ahead of the cursor."""
        return len(self._stream) - self._head

    def next_use(self, item: str) -> float:
        """Absolute position of the next read of ``item`` at/after the cursor, or ``NEVER``."""
        return self._next.get(item, NEVER)

    def set_future(self, items: Sequence[str], start: int = 0) -> None:
        """Replace the hint stream by ``items[start:]``; the old stream's positions are dropped.
        When the hints still ahead are the start of ``items[start:]``, the rest is appended."""
        if not 0 <= start <= len(items):
            raise ValueError(f"start {start} is outside the {len(items)} hinted items")
        upcoming = list(items[start:])
        ahead = self._stream[self._head:]
        if upcoming[:len(ahead)] == ahead:
            self.extend_future(upcoming[len(ahead):])
            return
        self._stream, self._following, self._head = [], [], 0
        self._next, self._last = {}, {}
        self._append(upcoming)
        self._rebuild()

    def extend_future(self, items: Iterable[str]) -> None:
        """Append ``items`` to the hint stream; cached items that had no next use get one."""
        for item in self._append(items):
            if item in self._keys:
                self._track(item)

    def on_demand(self, item: str) -> None:
        """The consumer reads ``item`` now: move the cursor past its next occurrence.

        Hints skipped on the way are consumed too (the consumer will not read them where they
        were hinted). An item with no occurrence ahead of the cursor leaves the cursor alone.
        """
        use = self._next.get(item)
        if use is not None:
            self._advance(use + 1)

    def wanted(self, item: str) -> bool:
        """Whether the hints ahead read ``item`` (any item may be read while none are ahead)."""
        return item in self._next or not self.remaining_hints

    def unneeded(self) -> list[BlockKey]:
        """The cached blocks of items the hints ahead do not read (the unhinted ones)."""
        if not self.remaining_hints:
            return []
        return [key for item in self._unhinted for key in self._keys[item]]

    # -- entries -----------------------------------------------------------------------------

    def inserted(self, key: BlockKey) -> None:
        """Track ``key`` under its item; a new item enters the heap or the unhinted set."""
        blocks = self._keys.get(key.item)
        if blocks is None:
            self._keys[key.item] = (key,)
            self._track(key.item)
        else:
            if key not in blocks:
                self._keys[key.item] = (*blocks, key)
            self.accessed(key)

    def removed(self, key: BlockKey) -> None:
        """Forget ``key``; its item is forgotten with its last block."""
        blocks = self._keys.get(key.item)
        if blocks is None:
            return
        left = tuple(block for block in blocks if block != key)
        if left:
            self._keys[key.item] = left
        else:
            del self._keys[key.item]
            self._unhinted.pop(key.item, None)

    def accessed(self, key: BlockKey) -> None:
        """A hit refreshes the recency among items with no known next use."""
        if key.item in self._unhinted:
            self._touch(key.item)

    def cleared(self) -> None:
        """Every entry left the tier; the hints stay."""
        self._keys.clear()
        self._unhinted.clear()
        self._heap.clear()

    def victim(self, incoming: BlockKey, entries: RecencyOrder) -> BlockKey | None:
        """The key to evict for ``incoming``, or ``None`` to refuse ``incoming``.

        Without hints this is LRU. With hints: entries with no next use go first; a newcomer
        with no next use, or whose next use is farther than every cached one, is refused.
        """
        if not self.remaining_hints:
            last = entries.peek_last_item()
            return None if last is None else last[0]
        wanted = self.next_use(incoming.item)
        if self._unhinted:
            if wanted == NEVER:
                return None
            return self._keys[next(iter(self._unhinted))][0]
        top = self._farthest()
        if top is None or wanted > top[0]:
            return None
        return self._keys[top[1]][0]

    # -- internals ---------------------------------------------------------------------------

    def _append(self, items: Iterable[str]) -> list[str]:
        """Append ``items`` to the stream; those that had no next use before, in order."""
        stream, following, upcoming, last = self._stream, self._following, self._next, self._last
        cursor, shift = self._cursor, self._head - self._cursor  # slot = position + shift
        position = cursor + len(stream) - self._head
        gained: list[str] = []
        for item in items:
            previous = last.get(item, -1)
            if previous >= cursor:
                following[previous + shift] = position
            else:
                upcoming[item] = position
                gained.append(item)
            last[item] = position
            stream.append(item)
            following.append(-1)
            position += 1
        return gained

    def _advance(self, target: int) -> None:
        """Move the cursor to absolute position ``target``, consuming the hints passed."""
        stream, following, upcoming, keys = self._stream, self._following, self._next, self._keys
        while self._cursor < target:
            item, after = stream[self._head], following[self._head]
            self._head += 1
            self._cursor += 1
            if after < 0:
                del upcoming[item]
            else:
                upcoming[item] = after
            if item in keys:
                self._track(item)
        if self._head > TRIM_AFTER and 2 * self._head > len(stream):
            del stream[:self._head], following[:self._head]
            self._head = 0

    def _track(self, item: str) -> None:
        """Re-file a cached item after its next use changed (or it was just stored)."""
        use = self._next.get(item)
        if use is None:
            self._touch(item)
            return
        self._unhinted.pop(item, None)
        heapq.heappush(self._heap, -use)
        if len(self._heap) > 2 * len(self._keys) + 1024:
            self._compact()

    def _touch(self, item: str) -> None:
        """Make ``item`` the most recent of the unhinted items."""
        self._unhinted.pop(item, None)
        self._unhinted[item] = None

    def _farthest(self) -> tuple[int, str] | None:
        """The cached item with the farthest known next use, dropping stale heap entries."""
        heap, shift = self._heap, self._head - self._cursor
        while heap:
            use = -heap[0]
            if use >= self._cursor:
                item = self._stream[use + shift]
                if item in self._keys:
                    return use, item
            heapq.heappop(heap)
        return None

    def _compact(self) -> None:
        """Drop stale heap entries (they pile up as next uses move forward)."""
        self._heap = [-self._next[item] for item in self._keys if item in self._next]
        heapq.heapify(self._heap)

    def _rebuild(self) -> None:
        """Re-file every cached item after the stream was replaced: items with a next use
        into the heap, the others unhinted (those that were keep their recency order)."""
        stale = list(self._unhinted)
        self._unhinted.clear()
        for item in [*stale, *self._keys]:
            if item not in self._next and item not in self._unhinted:
                self._unhinted[item] = None
        self._compact()
