"""The prefetcher: fetches the items a consumer announced, in its exact order, just ahead of it.

The consumer announces the order it will read items in (``set_hints``: a new epoch, a resume;
``extend_hints``: the next epoch, known ahead). The prefetcher keeps at most ``depth`` items and
``budget_bytes`` bytes fetched or in flight ahead of the consumer. Each read of the consumer
(:meth:`take`) moves the window: a prefetched item is handed over (``prefetch_used``; if its
fetch was still running, the consumer waits for that same fetch: ``prefetch_late``), items the
consumer skipped are dropped (``prefetch_wasted``) and the window refills. Replacing the hints
cancels in-flight prefetches that fell out of the new window. Prefetch requests run under
:func:`~seaweed_data.core.limiter.prefetching`, so demand reads overtake them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

from .limiter import prefetching
from .metrics import Counters

log = logging.getLogger(__name__)

Fetch = Callable[[str], Awaitable[bytes]]
Needed = Callable[[str], bool]
"""Whether an item must be fetched at all (False when it is already cached)."""
SizeOf = Callable[[str], int]

MAX_LOOKAHEAD_SKIP = 64  # how far ahead a read may match a hint before the hints are ignored


@dataclass
class Slot:
    task: asyncio.Task[bytes]
    size: int


class Prefetcher:
    """Exact-hint prefetching for one consumer (one process's stream of reads)."""

    def __init__(self, fetch: Fetch, needed: Needed, size_of: SizeOf, counters: Counters, *,
                 depth: int, budget_bytes: int, timeout: float) -> None:
        self._fetch = fetch
        self._needed = needed
        self._size_of = size_of
        self._counters = counters
        self.depth = depth
        self.budget_bytes = budget_bytes
        self._timeout = timeout
        self._hints: deque[str] = deque()
        self._slots: dict[str, Slot] = {}
        self._cached: set[str] = set()  # in the window, found cached: not asked again
        self._bytes_ahead = 0
        self._running: dict[asyncio.Task[bytes], float] = {}  # deadlines, oldest first
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def bytes_ahead(self) -> int:
        """Bytes fetched or in flight and not yet taken by the consumer."""
        return self._bytes_ahead

    @property
    def hints(self) -> list[str]:
        return list(self._hints)

    @property
    def busy(self) -> bool:
        """Whether prefetches are in flight or wait to be claimed (readable from any
        thread: a dict's length)."""
        return bool(self._slots)

    def upcoming(self, count: int) -> list[str]:
        """The next ``count`` hints (the window first)."""
        return list(islice(self._hints, count))

    def set_hints(self, items: Iterable[str]) -> None:
        """Replace the announced order; prefetches outside the new window are cancelled."""
        self._hints = deque(items)
        self._cached.clear()
        window = set(islice(self._hints, self.depth))
        for item in [i for i in self._slots if i not in window]:
            self._drop(item)
        self._pump()

    def continued_by(self, items: Sequence[str]) -> int | None:
        """How many hints are still ahead, when ``items`` starts with exactly them (the same
        order announced again with more of it); None when ``items`` is another order."""
        ahead = list(self._hints)
        return len(ahead) if list(items[:len(ahead)]) == ahead else None

    def extend_hints(self, items: Iterable[str]) -> None:
        """Append to the announced order (the next epoch, known ahead)."""
        self._hints.extend(items)
        self._pump()

    async def take(self, item: str) -> bytes | None:
        """The consumer reads ``item`` now: its prefetched bytes, or None to fetch it itself."""
        return await self.receive(self.claim(item))

    def claim(self, item: str) -> Slot | None:
        """The consumer reads ``item`` now: move the window past it and hand over its slot."""
        slot = self._hand_over(item)
        self._pump()
        return slot

    def claim_all(self, items: Iterable[str], *, refill: bool = True) -> list[Slot | None]:
        """:meth:`claim` of each of ``items`` in turn, the window refilled once at the end
        (unless ``refill`` is False: the next claim or hints refill it): for a batch the
        consumer read from the cache (an item of it beyond the window gets no slot, where
        claiming one by one would have considered it, found it cached, and not fetched it
        either)."""
        slots = [self._hand_over(item) for item in items]
        if refill:
            self._pump()
        return slots

    def _hand_over(self, item: str) -> Slot | None:
        """Move the window past ``item``; its slot, taken out of the window."""
        self._advance(item)
        slot = self._slots.pop(item, None)
        if slot is not None:
            self._bytes_ahead -= slot.size
        return slot

    async def receive(self, slot: Slot | None) -> bytes | None:
        """The bytes of a claimed slot, or None if there was none or its fetch failed."""
        if slot is None:
            return None
        if not slot.task.done():
            self._counters.add("prefetch_late")
        try:
            data = await asyncio.shield(slot.task)
        except asyncio.CancelledError:
            if not slot.task.cancelled() or being_cancelled():
                raise  # the consumer itself is being cancelled
            self._failed("timed out")
            return None
        except Exception as exc:  # the consumer refetches and gets the real error, if any
            self._failed(str(exc))
            return None
        self._counters.add("prefetch_used")
        return data

    def _failed(self, why: str) -> None:
        log.debug("a prefetch failed (%s); reading on demand", why)
        self._counters.add("prefetch_wasted")

    def settle(self, slot: Slot | None) -> None:
        """A claimed slot whose item the consumer found in the cache. The prefetch is what
        usually put it there (its task ends just after storing it), so it counts as used
        once it has succeeded, as wasted if it fails."""
        if slot is None:
            return
        if slot.task.done():
            self._count_outcome(slot.task)
        else:
            slot.task.add_done_callback(self._count_outcome)

    def _count_outcome(self, task: asyncio.Task[bytes]) -> None:
        ok = not task.cancelled() and task.exception() is None
        self._counters.add("prefetch_used" if ok else "prefetch_wasted")

    def _advance(self, item: str) -> None:
        """Pop hints up to the first occurrence of ``item``; skipped prefetches are wasted."""
        for position, hinted in enumerate(islice(self._hints, MAX_LOOKAHEAD_SKIP)):
            if hinted == item:
                for _ in range(position):
                    skipped = self._hints.popleft()
                    self._cached.discard(skipped)
                    if skipped in self._slots:
                        self._drop(skipped)
                self._cached.discard(self._hints.popleft())
                return

    def _pump(self) -> None:
        for item in islice(self._hints, self.depth):
            if item in self._slots or item in self._cached:
                continue
            if not self._needed(item):
                self._cached.add(item)
                continue
            size = self._size_of(item)
            if self._slots and self._bytes_ahead + size > self.budget_bytes:
                return
            with prefetching():  # the task inherits the context: its requests yield to demand
                task = asyncio.ensure_future(self._fetch(item))
            self._watch(task)
            self._slots[item] = Slot(task, size)
            self._bytes_ahead += size
            self._counters.add("prefetch_issued")

    def _watch(self, task: asyncio.Task[bytes]) -> None:
        """Cancel ``task`` if it runs past the timeout. One timer for all the prefetches,
        not one each: they start in order, so the oldest running one expires first."""
        loop = asyncio.get_running_loop()
        self._running[task] = loop.time() + self._timeout
        task.add_done_callback(self._settled)
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._running[task], self._expire)

    def _settled(self, task: asyncio.Task[bytes]) -> None:
        """A prefetch ended: forget it; mark its exception as seen (the consumer reads on
        demand instead)."""
        self._running.pop(task, None)
        if not task.cancelled():
            task.exception()

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = None
        for task, deadline in list(self._running.items()):
            if deadline > loop.time():
                self._watchdog = loop.call_at(deadline, self._expire)
                return
            task.cancel()

    def _drop(self, item: str) -> None:
        slot = self._slots.pop(item)
        self._bytes_ahead -= slot.size
        slot.task.cancel()
        self._counters.add("prefetch_wasted")

    def clear(self) -> None:
        """Cancel everything in flight; unconsumed prefetches count as wasted."""
        self._hints.clear()
        for item in list(self._slots):
            self._drop(item)


def being_cancelled() -> bool:
    """Whether the current task is being cancelled (not merely saw a cancelled future)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
