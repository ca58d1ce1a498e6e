"""The memory tier: blocks in an ``lru-dict`` under a strict byte budget and a pluggable policy.

Thread-safe behind one lock: the event-loop thread stores prefetched blocks while user threads
read. The lock is replaced in a forked child, so a fork taken while another thread held it
cannot deadlock a DataLoader worker.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Collection, Iterable, Iterator, Sequence

from lru import LRU

from seaweed_data.core.cache.keys import BlockKey
from seaweed_data.core.cache.policy import EvictionPolicy
from seaweed_data.errors import ConfigError

Value = bytes | memoryview

_TIERS: weakref.WeakSet[MemoryTier] = weakref.WeakSet()


def _nbytes(value: Value) -> int:
    return value.nbytes if isinstance(value, memoryview) else len(value)


class MemoryTier:
    """Cached blocks in memory; the sum of their sizes never exceeds ``capacity_bytes``.

    ``get`` refreshes recency but does not move the policy's cursor: the reader calls
    :meth:`on_demand` once per item it reads, hit or miss, before it ``put``\\ s fetched bytes
    (so that admission compares the item's *following* use, not the read in progress).
    """

    def __init__(self, capacity_bytes: int, policy: EvictionPolicy, *,
                 entry_overhead: int = 0, keep_unneeded: bool = True) -> None:
        if capacity_bytes < 0:
            raise ConfigError(f"memory cache capacity must be >= 0 bytes, got {capacity_bytes}")
        self._capacity = capacity_bytes
        self._policy = policy
        self._overhead = entry_overhead  # bookkeeping per entry, charged to the budget
        self._keep_unneeded = keep_unneeded
        # The count bound is unused: the byte budget below decides what stays.
        self._entries: LRU[BlockKey, Value] = LRU(sys.maxsize)
        self._used = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = self._rejected = 0
        _TIERS.add(self)

    @property
    def capacity_bytes(self) -> int:
        """The byte budget."""
        return self._capacity

    @property
    def used_bytes(self) -> int:
        """Bytes charged now: values plus the per-entry overhead (always ``<= capacity_bytes``)."""
        return self._used

    @property
    def policy(self) -> EvictionPolicy:
        """The eviction policy (do not call it directly: the tier holds the lock around it)."""
        return self._policy

    def get(self, key: BlockKey) -> Value | None:
        """The stored value of ``key`` (a hit refreshes its recency), or ``None``."""
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self._misses += 1
                return None
            self._hits += 1
            self._policy.accessed(key)
            return value

    def get_many(self, keys: Sequence[BlockKey]) -> list[Value | None]:
        """:meth:`get` of each of ``keys``, under one lock."""
        with self._lock:
            values = [self._entries.get(key) for key in keys]
            hits = [key for key, value in zip(keys, values, strict=True) if value is not None]
            for key in hits:
                self._policy.accessed(key)
            self._hits += len(hits)
            self._misses += len(keys) - len(hits)
        return values

    def put(self, key: BlockKey, value: Value) -> bool:
        """Store ``value`` under ``key``, evicting as the policy says; ``False`` if not admitted.

        An existing value of ``key`` is replaced (and is gone even if the new one is refused).
        """
        size = _nbytes(value) + self._overhead
        with self._lock:
            if key in self._entries:
                self._drop(key)
            if size > self._capacity or not (self._keep_unneeded
                                             or self._policy.wanted(key.item)):
                self._rejected += 1
                return False
            while self._used + size > self._capacity:
                victim = self._policy.victim(key, self._entries)
                if victim is None:
                    self._rejected += 1
                    return False
                self._drop(victim)
                self._evictions += 1
            self._entries[key] = value
            self._used += size
            self._policy.inserted(key)
            return True

    def remove(self, key: BlockKey) -> bool:
        """Drop ``key``; ``True`` if it was stored."""
        with self._lock:
            if key not in self._entries:
                return False
            self._drop(key)
            return True

    def clear(self) -> None:
        """Drop every entry (hints and counters stay)."""
        with self._lock:
            self._entries.clear()
            self._used = 0
            self._policy.cleared()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def missing(self, keys: Iterable[BlockKey]) -> list[BlockKey]:
        """Those of ``keys`` not stored (one lock for all of them)."""
        with self._lock:
            entries = self._entries
            return [key for key in keys if key not in entries]

    def __iter__(self) -> Iterator[BlockKey]:
        """Iterate over a snapshot of the stored keys, most recently used first."""
        return iter(self.keys())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list[BlockKey]:
        """A snapshot of the stored keys, most recently used first."""
        with self._lock:
            return self._entries.keys()

    def set_future(self, items: Sequence[str], start: int = 0) -> None:
        """Replace the policy's hint stream by ``items[start:]`` (new epoch, resume)."""
        with self._lock:
            self._policy.set_future(items, start)

    def extend_future(self, items: Iterable[str]) -> None:
        """Append ``items`` to the policy's hint stream (for example the next epoch)."""
        with self._lock:
            self._policy.extend_future(items)

    def on_demand(self, item: str) -> None:
        """The consumer reads ``item`` now (hit or miss): advance the policy's cursor (and,
        unless the tier keeps unneeded blocks, drop those of other items)."""
        with self._lock:
            self._policy.on_demand(item)
            self._drop_unneeded((item,))  # ``item`` is read after this call

    def on_demand_all(self, items: Iterable[str], *, reading: Collection[str] = ()) -> None:
        """:meth:`on_demand` of each of ``items``, in order, under one lock: reads that are
        over (reported after the fact), or a batch read from now on, whose items are named
        in ``reading`` (their blocks are not dropped before they are read)."""
        with self._lock:
            for item in items:
                self._policy.on_demand(item)
            self._drop_unneeded(reading)

    def _drop_unneeded(self, but: Collection[str] = ()) -> None:
        """Unless the tier keeps them, drop the blocks the hints ahead do not read (another
        tier holds them). Called as the cursor moves, so they are dropped once read."""
        if self._keep_unneeded:
            return
        for key in self._policy.unneeded():
            if key.item not in but:
                self._drop(key)

    def stats(self) -> dict[str, int]:
        """Counters: ``hits``, ``misses``, ``evictions``, ``rejected``, ``bytes``, ``entries``,
        ``capacity``."""
        with self._lock:
            return {
                "hits": self._hits,
                "misses": self._misses,
                "evictions": self._evictions,
                "rejected": self._rejected,
                "bytes": self._used,
                "entries": len(self._entries),
                "capacity": self._capacity,
            }

    def __repr__(self) -> str:
        return (f"MemoryTier({self._used}/{self._capacity} bytes, {len(self._entries)} entries, "
                f"policy={self._policy.name!r})")

    def _drop(self, key: BlockKey) -> None:
        value = self._entries[key]
        del self._entries[key]
        self._used -= _nbytes(value) + self._overhead
        self._policy.removed(key)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


def _reset_locks_after_fork() -> None:
    for tier in list(_TIERS):
        tier._after_fork()


os.register_at_fork(after_in_child=_reset_locks_after_fork)
