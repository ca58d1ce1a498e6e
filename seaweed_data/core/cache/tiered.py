"""Memory tier in front of the node-wide disk tier.

A read looks in memory, then on disk (a disk hit is promoted to memory), and counts
``cache_hits`` (with ``cache_hits_memory`` / ``cache_hits_disk``) or ``cache_misses``. A put
offers the block to memory (the eviction policy may refuse it) and writes it to disk. Blocks
larger than ``OFFLOAD_BYTES`` go to and from the disk on a worker thread so the event loop
never waits for a large file operation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing.util
import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...config import Config
from ..metrics import Counters
from .keys import BlockKey
from .memory import MemoryTier
from .policy import make_policy

if TYPE_CHECKING:
    from .disk import DiskTier

log = logging.getLogger(__name__)

OFFLOAD_BYTES = 1 << 20
ENTRY_OVERHEAD_BYTES = 512
"""What an entry costs besides its bytes (key, LRU node, the eviction policy's bookkeeping),
charged to ``memory_cache_bytes`` so that many small files keep to the budget too."""
MAX_PENDING_WRITES = 64
WRITE_BURST = 32
"""Queued blocks the writer thread files in one index transaction, at most."""
_HIT_COUNTERS = {tier: ("cache_hits", f"cache_hits_{tier}") for tier in ("memory", "disk")}


class TieredCache:
    """Blocks of files by :class:`BlockKey`; hints steer the memory tier's eviction."""

    def __init__(self, config: Config, counters: Counters) -> None:
        self.memory = MemoryTier(config.memory_cache_bytes, make_policy(config.eviction),
                                 entry_overhead=ENTRY_OVERHEAD_BYTES)
        self.disk: DiskTier | None = None
        self._writer = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="seaweed_data-disk")
        self._queued: deque[tuple[str, bytes, float | None]] = deque()
        self._queue_lock = threading.Lock()
        self._draining: concurrent.futures.Future[None] | None = None
        # Writes still queued when a process ends (a DataLoader worker) are finished first.
        multiprocessing.util.Finalize(self, self._writer.shutdown, exitpriority=10)
        if config.disk_cache_dir and config.disk_cache_bytes > 0:
            from .disk import DiskTier

            self.disk = DiskTier(config.disk_cache_dir, config.disk_cache_bytes)
        self._counters = counters

    @property
    def enabled(self) -> bool:
        return self.memory.capacity_bytes > 0 or self.disk is not None

    def contains(self, key: BlockKey) -> bool:
        """Whether a tier holds ``key`` (on disk: a row in the index, not yet verified)."""
        return key in self.memory or (self.disk is not None and self.disk.has(key.digest))

    def on_disk(self, keys: Sequence[BlockKey]) -> set[BlockKey]:
        """Those of ``keys`` the disk tier holds now (filed, not yet verified), in a few
        index queries for all of them."""
        if self.disk is None or not keys:
            return set()
        digests = [key.digest for key in keys]
        found = self.disk.has_many(digests)
        return {key for key, digest in zip(keys, digests, strict=True) if digest in found}

    async def get(self, key: BlockKey, *, count_miss: bool = True,
                  disk: bool = True) -> bytes | None:
        if key.size > OFFLOAD_BYTES and disk:
            return await asyncio.to_thread(self.get_now, key, count_miss=count_miss)
        return self.get_now(key, count_miss=count_miss, disk=disk)

    def get_now(self, key: BlockKey, *, count_miss: bool = True,
                disk: bool = True) -> bytes | None:
        """:meth:`get` in the calling thread (any thread): memory, then disk (promoted).
        ``count_miss=False`` when a miss will be looked up (and counted) again;
        ``disk=False`` when the disk tier was just asked about ``key``."""
        value = self.memory.get(key)
        if value is not None:
            self._hit("memory")
            return bytes(value)
        if self.disk is not None and disk:
            data = self.disk.get(key.digest)
            if data is not None:
                self._hit("disk")
                self.memory.put(key, data)
                return data
        if count_miss:
            self._counters.add("cache_misses")
        return None

    async def put(self, key: BlockKey, data: bytes, *, expires_at: float | None = None) -> None:
        self.memory.put(key, data)
        if self.disk is None:
            return
        # Write behind: appending and indexing an entry costs ~35 µs (more when it waits for
        # another process's transaction or evicts), which the reader should not wait for.
        # Puts queue up and one job of the writer thread stores every queued block (a
        # thread hand-off per burst, not per block); past MAX_PENDING_WRITES queued blocks
        # the reader waits for the disk.
        with self._queue_lock:
            self._queued.append((key.digest, data, expires_at))
            job = self._draining
            if job is None:
                job = self._draining = self._writer.submit(self._write_queued)
        if len(self._queued) > MAX_PENDING_WRITES:
            await asyncio.wrap_future(job)

    def _write_queued(self) -> None:
        """The writer thread's job: store the queued blocks, a burst per index transaction,
        until none is left."""
        assert self.disk is not None
        while True:
            with self._queue_lock:
                if not self._queued:
                    self._draining = None
                    return
                burst = [self._queued.popleft()
                         for _ in range(min(len(self._queued), WRITE_BURST))]
            try:
                self.disk.put_many(burst)
            except Exception:  # the disk tier reports its own errors; never lose the job
                log.exception("a disk-cache write failed")

    async def drain(self) -> None:
        """Wait until every queued disk write is done (other processes can then read it)."""
        while True:
            with self._queue_lock:
                job = self._draining
            if job is None:
                return
            await asyncio.wrap_future(job)

    def on_demand(self, item: str) -> None:
        """The consumer reads ``item`` now (moves the eviction policy's view of the future)."""
        self.memory.on_demand(item)

    def on_demand_all(self, items: Sequence[str]) -> None:
        self.memory.on_demand_all(items)

    def set_future(self, items: Sequence[str]) -> None:
        self.memory.set_future(items)

    def extend_future(self, items: Sequence[str]) -> None:
        self.memory.extend_future(items)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._queued.clear()
        self.memory.clear()
        if self.disk is not None:
            self.disk.close()

    def _hit(self, tier: str) -> None:
        self._counters.add_each(_HIT_COUNTERS[tier])
