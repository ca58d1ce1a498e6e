"""Memory tier in front of the node-wide disk tier.

A read looks in memory, then on disk, and counts ``cache_hits`` (with ``cache_hits_memory`` /
``cache_hits_disk``) or ``cache_misses``. A put offers the block to memory (the eviction
policy may refuse it) and writes it to disk.

With a disk tier, memory holds only what is about to be read: prefetched blocks, and blocks
the hints read again (with the ``"future"`` policy; without hints ahead, or with ``"lru"``,
nothing is known and memory is LRU). A block read and not hinted again is dropped, and a
disk hit is copied into memory only for a prefetch (the reading thread picks prefetched
files up there). The page cache already keeps the disk tier's recent data in RAM for every
process of the node, while keeping blocks in a process costs it page faults (~12 µs per
13 KB file on the VM we measure on) each time it allocates for new data instead of reusing
what it freed:

- a persistent DataLoader worker's warm epoch took 0.277 s with disk hits copied into
  memory and 0.233 s without (the epoch after it 0.243 s and 0.227 s; medians of 8 runs);
- a cold epoch's DataLoader workers (fresh, 10,000 files of ~13 KB through the disk tier)
  took 48,500 page faults keeping what they had read, 21,300 dropping it; their CPU went
  from 1.42-1.47 to 1.36-1.37 s (two runs of 5 interleaved rounds).

Blocks larger than ``OFFLOAD_BYTES`` go to and from the disk on a worker thread so the event
loop never waits for a large file operation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import multiprocessing.util
import threading
import time
from collections import deque
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, cast

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
MAX_PENDING_WRITES = 2048
MAX_PENDING_BYTES = 64 << 20
"""Past either many blocks queued for the disk, the reader waits for the disk."""
WRITE_BURST = 1024
WRITE_BURST_BYTES = 16 << 20
"""Queued blocks the writer thread files in one index transaction, at most."""
WRITE_LINGER_S = 0.05
"""How long the writer thread waits for a whole burst before filing fewer blocks. An index
transaction rewrites every index page its rows touch (hashed keys land on pages all over the
index), so a few large bursts cost much less than many small ones: a cold image-folder epoch
with bursts of ~100 blocks spent ~5% more time than with bursts of ~500. Other processes see
a block on the disk tier this much later at most (DataLoader workers of one epoch read
different files; ``flush()`` does not wait)."""
_HIT_COUNTS = {tier: {"cache_hits": 1, f"cache_hits_{tier}": 1} for tier in ("memory", "disk")}


class TieredCache:
    """Blocks of files by :class:`BlockKey`; hints steer the memory tier's eviction."""

    def __init__(self, config: Config, counters: Counters) -> None:
        self.disk: DiskTier | None = None
        if config.disk_cache_dir and config.disk_cache_bytes > 0:
            from .disk import DiskTier

            self.disk = DiskTier(config.disk_cache_dir, config.disk_cache_bytes)
        # With a disk tier behind it, memory keeps only what the hints read again.
        self.memory = MemoryTier(config.memory_cache_bytes, make_policy(config.eviction),
                                 entry_overhead=ENTRY_OVERHEAD_BYTES,
                                 keep_unneeded=self.disk is None)
        self._writer = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="seaweed_data-disk")
        self._queued: deque[tuple[str, bytes, float | None]] = deque()
        self._queued_bytes = 0
        self._queue_lock = threading.Lock()
        self._draining: concurrent.futures.Future[None] | None = None
        self._hurry = threading.Event()  # someone waits for the queued writes: no lingering
        # Writes still queued when a process ends (a DataLoader worker) are finished first.
        multiprocessing.util.Finalize(self, _finish_writes, args=(self._writer, self._hurry),
                                      exitpriority=10)
        self._counters = counters

    @property
    def enabled(self) -> bool:
        return self.memory.capacity_bytes > 0 or self.disk is not None

    def on_disk(self, keys: Sequence[BlockKey]) -> set[BlockKey]:
        """Those of ``keys`` the disk tier holds now (filed, not yet verified), in a few
        index queries for all of them."""
        if self.disk is None or not keys:
            return set()
        digests = [key.digest for key in keys]
        found = self.disk.has_many(digests)
        return {key for key, digest in zip(keys, digests, strict=True) if digest in found}

    async def get(self, key: BlockKey, *, count_miss: bool = True, disk: bool = True,
                  promote: bool = False) -> bytes | None:
        if key.size > OFFLOAD_BYTES and disk:
            return await asyncio.to_thread(self.get_now, key, count_miss=count_miss,
                                           promote=promote)
        return self.get_now(key, count_miss=count_miss, disk=disk, promote=promote)

    def get_now(self, key: BlockKey, *, count_miss: bool = True, disk: bool = True,
                promote: bool = False) -> bytes | None:
        """:meth:`get` in the calling thread (any thread): memory, then disk (copied into
        memory with ``promote=True``: a prefetch, read from memory soon).
        ``count_miss=False`` when a miss will be looked up (and counted) again;
        ``disk=False`` when the disk tier was just asked about ``key``."""
        value = self.memory.get(key)
        if value is not None:
            self._counters.add_all(_HIT_COUNTS["memory"])
            return bytes(value)
        data = self.disk.get(key.digest) if self.disk is not None and disk else None
        if data is not None:
            if promote:
                self.memory.put(key, data)
            self._counters.add_all(_HIT_COUNTS["disk"])
        elif count_miss:
            self._counters.add("cache_misses")
        return data

    def get_leading(self, keys: Sequence[BlockKey], disk: Sequence[bool]) -> list[bytes]:
        """:meth:`get_now` of ``keys`` in order up to the first miss (not counted), the hits
        counted at once; ``disk[i]`` False skips the disk tier for ``keys[i]``. What memory
        lacks is read from the disk tier in one call."""
        found: list[bytes | None] = []
        for value, ask_disk in zip(self.memory.get_many(keys), disk, strict=True):
            if value is None and not (ask_disk and self.disk is not None):
                break
            found.append(None if value is None else bytes(value))
        asked = [i for i, data in enumerate(found) if data is None]
        if asked:
            assert self.disk is not None
            read = self.disk.get_many([keys[i].digest for i in asked])
            for i, data in zip(asked, read, strict=True):
                found[i] = data
        hits = list(itertools.takewhile(_is_not_none, found))
        if hits:
            from_disk = sum(1 for i in asked if i < len(hits))
            self._counters.add_all({"cache_hits": len(hits),
                                    "cache_hits_memory": len(hits) - from_disk,
                                    "cache_hits_disk": from_disk})
        return cast(list[bytes], hits)

    def disk_leading(self, disk_keys: Sequence[bytes]) -> list[bytes]:
        """The entries of the disk tier's index keys ``disk_keys``, in order up to the first
        one it lacks (not counted as a miss), the hits counted at once; memory is not asked."""
        if self.disk is None or not disk_keys:
            return []
        hits = list(itertools.takewhile(_is_not_none, self.disk.get_many_keys(disk_keys)))
        if hits:
            self._counters.add_all({"cache_hits": len(hits), "cache_hits_disk": len(hits)})
        return cast(list[bytes], hits)

    async def put(self, key: BlockKey, data: bytes, *, expires_at: float | None = None) -> None:
        self.memory.put(key, data)
        if self.disk is None:
            return
        # Write behind: appending and indexing an entry costs ~35 µs (more when it waits for
        # another process's transaction or evicts), which the reader should not wait for.
        # Puts queue up and one job of the writer thread stores every queued block (a
        # thread hand-off per burst, not per block); past MAX_PENDING_WRITES queued blocks
        # (or MAX_PENDING_BYTES) the reader waits for the disk.
        with self._queue_lock:
            self._queued.append((key.digest, data, expires_at))
            self._queued_bytes += len(data)
            job = self._draining
            if job is None:
                job = self._draining = self._writer.submit(self._write_queued)
        if len(self._queued) > MAX_PENDING_WRITES or self._queued_bytes > MAX_PENDING_BYTES:
            self._hurry.set()
            await asyncio.wrap_future(job)

    def _write_queued(self) -> None:
        """The writer thread's job: store the queued blocks, a burst per index transaction,
        until none is left."""
        assert self.disk is not None
        while True:
            self._linger()
            with self._queue_lock:
                if not self._queued:
                    self._draining = None
                    self._hurry.clear()
                    return
                burst = self._next_burst()
            try:
                self.disk.put_many(burst)
            except Exception:  # the disk tier reports its own errors; never lose the job
                log.exception("a disk-cache write failed")

    def _next_burst(self) -> list[tuple[str, bytes, float | None]]:
        """Take the blocks of one burst off the queue (the caller holds the queue lock)."""
        burst: list[tuple[str, bytes, float | None]] = []
        size = 0
        while self._queued and len(burst) < WRITE_BURST and size < WRITE_BURST_BYTES:
            block = self._queued.popleft()
            burst.append(block)
            size += len(block[1])
        self._queued_bytes -= size
        return burst

    def _linger(self) -> None:
        """Wait (up to :data:`WRITE_LINGER_S`) for a whole burst to queue up."""
        deadline = time.monotonic() + WRITE_LINGER_S
        while (len(self._queued) < WRITE_BURST and self._queued_bytes < WRITE_BURST_BYTES
               and time.monotonic() < deadline):
            if self._hurry.wait(0.002):
                return

    async def drain(self) -> None:
        """Wait until every queued disk write is done (other processes can then read it)."""
        while True:
            with self._queue_lock:
                job = self._draining
            if job is None:
                return
            self._hurry.set()
            await asyncio.wrap_future(job)

    def on_demand(self, item: str) -> None:
        """The consumer reads ``item`` now (moves the eviction policy's view of the future)."""
        self.memory.on_demand(item)

    def on_demand_all(self, items: Sequence[str], *, reading: Collection[str] = ()) -> None:
        self.memory.on_demand_all(items, reading=reading)

    def set_future(self, items: Sequence[str]) -> None:
        self.memory.set_future(items)

    def extend_future(self, items: Sequence[str]) -> None:
        self.memory.extend_future(items)

    def close(self) -> None:
        _finish_writes(self._writer, self._hurry)
        self._queued.clear()
        self._queued_bytes = 0
        self.memory.clear()
        if self.disk is not None:
            self.disk.close()


def _is_not_none(data: bytes | None) -> bool:
    return data is not None


def _finish_writes(writer: concurrent.futures.ThreadPoolExecutor,
                   hurry: threading.Event) -> None:
    """Store what is queued now, without lingering, and stop the writer thread."""
    hurry.set()
    writer.shutdown(wait=True)
