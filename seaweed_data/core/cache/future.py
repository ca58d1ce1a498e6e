"""Future-aware eviction: Belady's MIN driven by the known future access order.

A training loop knows the order in which it will read its items (this epoch's remaining order
and, with a seeded sampler, the next epoch's). With that order the optimal replacement is known:
evict the entry whose next use is farthest away, and do not admit a newcomer whose next use is
farther than that of everything cached. With no hints at all the policy is plain LRU.

Data structures (every operation O(log n) amortised, no scans per access):

- ``_stream``: the hint stream from the cursor on; the cursor is the absolute position of its
  head, so positions never need renumbering when the stream grows or the cursor moves.
- ``_positions``: per item, the ascending absolute positions of its future reads; the head is
  its next use. A short list (an item comes once or twice per epoch), not a deque: a deque
  allocates half a kilobyte, and 10,000 of them per epoch cost more than the whole rebuild.
- a max-heap of ``(-next_use, item)`` over the cached items with a known next use, invalidated
  lazily: an entry counts only while ``_pushed[item]`` still equals it. A next use only changes
  when the cursor passes it, and the cursor passes every position it skips, so each such
  change re-pushes the item and the heap never holds a stale "too soon" value unnoticed.
- ``_unhinted``: cached items with no known next use, least recently used first; they are
  evicted before anything with a next use.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Sequence

from seaweed_data.core.cache.keys import BlockKey
from seaweed_data.core.cache.policy import RecencyOrder

NEVER = float("inf")  # the next use of an item with no hint ahead of the cursor


class FutureAwareEviction:
    """Belady's MIN over the hint stream, with admission control and an LRU fallback."""

    name = "future"

    def __init__(self) -> None:
        self._stream: deque[str] = deque()
        self._cursor = 0
        self._positions: dict[str, list[int]] = {}
        self._keys: dict[str, dict[BlockKey, None]] = {}
        self._unhinted: dict[str, None] = {}
        self._heap: list[tuple[int, str]] = []
        self._pushed: dict[str, int] = {}

    # -- hints -------------------------------------------------------------------------------

    @property
    def cursor(self) -> int:
        """How many hints the consumer has moved past since this policy was created."""
        return self._cursor

    @property
    def remaining_hints(self) -> int:
        """Hints ahead of the cursor."""
        return len(self._stream)

    def next_use(self, item: str) -> float:
        """Absolute position of the next read of ``item`` at/after the cursor, or ``NEVER``."""
        queue = self._positions.get(item)
        return queue[0] if queue else NEVER

    def set_future(self, items: Sequence[str], start: int = 0) -> None:
        """Replace the hint stream by ``items[start:]``; the old stream's positions are dropped."""
        if not 0 <= start <= len(items):
            raise ValueError(f"start {start} is outside the {len(items)} hinted items")
        self._stream = deque(items[start:])
        positions: dict[str, list[int]] = {}
        for position, item in enumerate(self._stream, self._cursor):
            queue = positions.get(item)
            if queue is None:
                positions[item] = [position]
            else:
                queue.append(position)
        self._positions = positions
        self._rebuild()

    def extend_future(self, items: Iterable[str]) -> None:
        """Append ``items`` to the hint stream; cached items that had no next use get one."""
        base = self._cursor + len(self._stream)
        gained: list[str] = []
        for offset, item in enumerate(items):
            queue = self._positions.get(item)
            if queue is None:
                queue = self._positions[item] = []
                gained.append(item)
            queue.append(base + offset)
            self._stream.append(item)
        for item in gained:
            if item in self._keys:
                self._track(item)

    def on_demand(self, item: str) -> None:
        """The consumer reads ``item`` now: move the cursor past its next occurrence.

        Hints skipped on the way are consumed too (the consumer will not read them where they
        were hinted). An item with no occurrence ahead of the cursor leaves the cursor alone.
        """
        queue = self._positions.get(item)
        if queue:
            self._advance(queue[0] + 1)

    # -- entries -----------------------------------------------------------------------------

    def inserted(self, key: BlockKey) -> None:
        """Track ``key`` under its item; a new item enters the heap or the unhinted set."""
        blocks = self._keys.get(key.item)
        if blocks is None:
            self._keys[key.item] = {key: None}
            self._track(key.item)
        else:
            blocks[key] = None
            self.accessed(key)

    def removed(self, key: BlockKey) -> None:
        """Forget ``key``; its item is forgotten with its last block."""
        blocks = self._keys.get(key.item)
        if blocks is None:
            return
        blocks.pop(key, None)
        if not blocks:
            del self._keys[key.item]
            self._unhinted.pop(key.item, None)
            self._pushed.pop(key.item, None)

    def accessed(self, key: BlockKey) -> None:
        """A hit refreshes the recency among items with no known next use."""
        if key.item in self._unhinted:
            self._touch(key.item)

    def cleared(self) -> None:
        """Every entry left the tier; the hints stay."""
        self._keys.clear()
        self._unhinted.clear()
        self._heap.clear()
        self._pushed.clear()

    def victim(self, incoming: BlockKey, entries: RecencyOrder) -> BlockKey | None:
        """The key to evict for ``incoming``, or ``None`` to refuse ``incoming``.

        Without hints this is LRU. With hints: entries with no next use go first; a newcomer
        with no next use, or whose next use is farther than every cached one, is refused.
        """
        if not self._stream:
            last = entries.peek_last_item()
            return None if last is None else last[0]
        wanted = self.next_use(incoming.item)
        if self._unhinted:
            if wanted == NEVER:
                return None
            return next(iter(self._keys[next(iter(self._unhinted))]))
        top = self._farthest()
        if top is None or wanted > top[0]:
            return None
        return next(iter(self._keys[top[1]]))

    # -- internals ---------------------------------------------------------------------------

    def _advance(self, target: int) -> None:
        """Move the cursor to absolute position ``target``, consuming the hints passed."""
        while self._cursor < target:
            item = self._stream.popleft()
            self._cursor += 1
            queue = self._positions[item]
            del queue[0]
            if not queue:
                del self._positions[item]
            if item in self._keys:
                self._track(item)

    def _track(self, item: str) -> None:
        """Re-file a cached item after its next use changed (or it was just stored)."""
        queue = self._positions.get(item)
        if not queue:
            self._pushed.pop(item, None)
            self._touch(item)
            return
        self._unhinted.pop(item, None)
        if self._pushed.get(item) != queue[0]:
            self._pushed[item] = queue[0]
            heapq.heappush(self._heap, (-queue[0], item))
            if len(self._heap) > 2 * len(self._pushed) + 1024:
                self._compact()

    def _touch(self, item: str) -> None:
        """Make ``item`` the most recent of the unhinted items."""
        self._unhinted.pop(item, None)
        self._unhinted[item] = None

    def _farthest(self) -> tuple[int, str] | None:
        """The cached item with the farthest known next use, dropping stale heap entries."""
        heap = self._heap
        while heap:
            negated, item = heap[0]
            if self._pushed.get(item) == -negated:
                return -negated, item
            heapq.heappop(heap)
        return None

    def _compact(self) -> None:
        """Drop stale heap entries (they pile up as next uses move forward)."""
        self._heap = [(-use, item) for item, use in self._pushed.items()]
        heapq.heapify(self._heap)

    def _rebuild(self) -> None:
        """Re-file every cached item after the stream was replaced."""
        self._heap.clear()
        self._pushed.clear()
        stale_unhinted = list(self._unhinted)
        self._unhinted.clear()
        for item in stale_unhinted:
            self._track(item)
        for item in self._keys:
            if item not in self._unhinted:
                self._track(item)
