"""Whole-file reads through the engine: prefetcher, tiered cache, single-flight fetches.

A consumer that knows its future announces it: :meth:`ItemReads.set_hints` takes the exact
order of the files it will read (this epoch, and the next one when known). The same order
drives the prefetcher (what to fetch ahead) and the memory tier's eviction (what to keep).
Metadata of hinted files is fetched up front by listing their directories and kept for as long
as the hints stand, so an epoch costs one listing page per thousand files, not a request each.

Without hints, a consumer that walks a known order sequentially (``expect_order``: a dataset
read with ``shuffle=False``) is detected and prefetched as if it had announced it.

A batch (:meth:`ItemReads.claim_batch`, then :meth:`ItemReads.fetch_at_once`) moves the
prefetch window and the eviction cursor past all of its files at once, asks the disk tier
about them in one query, and fetches the small files no tier holds together, pipelined.

Every demand read of a file (hit or miss) moves the eviction policy's cursor; every fetch is
single-flight: readers of one block in flight (threads, a prefetch and a demand read) share one
request, run by the reader that started it; if that one gives up, the next one fetches again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial

from ..config import Config
from .cache.disk_layout import DISK_KEY_BYTES, entry_key
from .cache.keys import BlockKey
from .cache.tiered import TieredCache
from .entry import Entry
from .flights import Flights
from .metrics import Counters
from .needles import small_and_plain
from .patterns import OrderDetector
from .prefetch import Prefetcher, Slot

Stat = Callable[[str], Awaitable[Entry]]
Download = Callable[[Entry], Awaitable[bytes]]
FetchMany = Callable[[Sequence[Entry]], Awaitable[list[bytes | None]]]
"""Whole files fetched together; None for each one that could not be (read it alone)."""
log = logging.getLogger(__name__)

DISK_LOOKAHEAD = 64  # hinted files looked up on the disk tier in one query
ON_DISK_MAX = 4096  # answers of the disk tier's index kept at most
LATE_HITS = 256
"""Cache hits a reading thread may leave unreported while no prefetch is under way (see
:meth:`ItemReads.hits_to_report`)."""

WarmMetadata = Callable[[Sequence[str]], Awaitable[dict[str, Entry]]]


def whole_file_key(entry: Entry) -> BlockKey:
    return BlockKey(entry.path, entry.version, 0, entry.size)


NO_DISK_KEY = bytes(DISK_KEY_BYTES)
"""In :func:`disk_keys`: a file with no bytes of its own to cache."""


def disk_keys(entries: Sequence[Entry]) -> bytes:
    """The disk tier's index key of each entry's whole file, :data:`DISK_KEY_BYTES` each,
    in one string (:data:`NO_DISK_KEY` for a file with no bytes of its own): what
    :meth:`ItemReads.peek_disk` reads by. Made in the process that lists a dataset, it is
    inherited by the processes it forks, which then neither hash the keys again nor touch
    the entries (a forked DataLoader worker copied a page of memory for every few entries
    it touched: ~2,000 page faults, ~10 ms per 5,000 samples)."""
    return b"".join(entry_key(whole_file_key(entry).digest) if _has_own_bytes(entry)
                    else NO_DISK_KEY for entry in entries)


def _has_own_bytes(entry: Entry) -> bool:
    """Whether the file has bytes of its own to cache (not empty, not inline in its entry)."""
    return entry.content is None and entry.size > 0


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("prefetch hints were not applied: %s", task.exception())


async def _one_by_one(entries: Sequence[Entry]) -> list[bytes | None]:
    return [None] * len(entries)


class ItemReads:
    """Cached, prefetched, single-flight whole-file reads for one client."""

    def __init__(self, config: Config, counters: Counters, stat: Stat, download: Download,
                 warm: WarmMetadata, fetch_many: FetchMany | None = None) -> None:
        self.config = config
        self.cache = TieredCache(config, counters)
        self.prefetcher = Prefetcher(self._prefetch, self._needs_fetch, self._size_of,
                                     counters, depth=config.prefetch_items,
                                     budget_bytes=config.prefetch_bytes,
                                     timeout=config.prefetch_timeout)
        self._counters = counters
        self._stat = stat
        self._download = download
        self._fetch_many = fetch_many or _one_by_one
        self._warm = warm
        self._hinted: dict[str, Entry] = {}
        self._on_disk: dict[BlockKey, bool] = {}  # hinted files looked up: whether on disk
        self._flights = Flights()
        self._order: OrderDetector | None = None
        self._late_hits: list[str] = []  # read from the cache, not reported yet
        self._expected = False  # whether hints or an order were announced (expect_reads)
        self._late_lock = threading.Lock()

    # -- announcing the future -----------------------------------------------------------------

    async def set_hints(self, paths: Sequence[str], next_paths: Sequence[str] = (),
                        known: Mapping[str, Entry] | None = None, *,
                        prefetch_next: bool = True) -> None:
        """The exact order of the coming reads (and of the next epoch's, when known).

        ``known`` entries (e.g. from a dataset's listing) spare the metadata requests.
        ``prefetch_next=False`` uses the next epoch's order for eviction only: a process
        that may not live to read it should not fetch it.
        """
        known = known or {}
        unknown = [p for p in [*paths, *next_paths] if p not in known]
        found = await self._warm(unknown) if unknown else {}
        self.use_hints(paths, next_paths, {**known, **found} if found else known,
                       prefetch_next=prefetch_next)

    def hint_soon(self, paths: Sequence[str], next_paths: Sequence[str],
                  known: Mapping[str, Entry], *, prefetch_next: bool) -> None:
        """:meth:`set_hints` posted from another thread (on the loop thread): at once when
        ``known`` has every entry, so the hints come before any call posted after them;
        otherwise in a task (a failure is logged: reads go on without prefetching)."""
        if all(p in known for p in [*paths, *next_paths]):
            self.use_hints(paths, next_paths, known, prefetch_next=prefetch_next)
            return
        task = asyncio.ensure_future(
            self.set_hints(paths, next_paths, known, prefetch_next=prefetch_next))
        task.add_done_callback(_log_failure)

    def use_hints(self, paths: Sequence[str], next_paths: Sequence[str],
                  known: Mapping[str, Entry], *, prefetch_next: bool = True) -> None:
        """:meth:`set_hints` of files whose entries ``known`` holds (those it lacks are read
        without prefetching)."""
        self.expect_reads()
        everything = [*paths, *next_paths]
        fetched = everything if prefetch_next else list(paths)
        self._hinted = {p: known[p] for p in everything if p in known}
        # The same order told again with more of it (a worker's next epoch, announced a
        # whole epoch ago): only the new part is appended.
        ahead = self.prefetcher.continued_by(fetched)
        self.cache.set_future(everything)
        if ahead is None:
            self._on_disk.clear()
            self.prefetcher.set_hints(fetched)
        else:
            self.prefetcher.extend_hints(fetched[ahead:])

    async def extend_hints(self, paths: Sequence[str]) -> None:
        """More reads after the announced ones (e.g. the next epoch, computed ahead)."""
        self.expect_reads()
        self._hinted.update(await self._warm(paths))
        self.cache.extend_future(paths)
        self.prefetcher.extend_hints(paths)

    def expect_reads(self) -> None:
        """Hints or an order are on their way (any thread, before they are posted to the
        loop thread): from now on the reads are reported (:meth:`hits_to_report`)."""
        self._expected = True

    def expect_order(self, paths: Sequence[str]) -> None:
        """The natural order of a dataset: sequential traversals of it get prefetched."""
        self.expect_reads()
        self._order = OrderDetector(paths, self._counters)

    def is_hinted(self, path: str) -> bool:
        return path in self._hinted

    # -- reading -------------------------------------------------------------------------------

    async def entry(self, path: str) -> Entry:
        hinted = self._hinted.get(path)
        return hinted if hinted is not None else await self._stat(path)

    async def read(self, entry: Entry) -> bytes:
        """The whole file: prefetched, cached, or fetched once for everyone asking."""
        path = entry.path
        self.cache.on_demand(path)
        slot = self.prefetcher.claim(path)
        self._follow_order(path)
        return await self.read_claimed(entry, slot)

    def claim_batch(self, entries: Sequence[Entry], found: Sequence[bytes | None]
                    ) -> list[Slot | None]:
        """A batch is read now, in this order: move the prefetch window past all of it at
        once, refilled after it, and the eviction cursor too; hand over the prefetched
        slots. ``found[i]`` not None is a file the caller read from the cache itself
        (reported here, as :meth:`consumed`). Read the others with
        :meth:`fetch_at_once`, then :meth:`read_claimed`.

        Claiming file by file refilled the window with files of the same batch, which its
        own concurrent reads were about to fetch: every file of a cold batch then went
        through a prefetch as well as a demand read (a cold DataLoader epoch of 10,000 files
        issued 9,872 prefetches; now 1,240, the files after each batch)."""
        paths = [entry.path for entry in entries]
        slots = self.prefetcher.claim_all(paths)
        self.cache.on_demand_all(paths, reading=set(paths))
        self._follow_order_all(paths)
        for slot, data in zip(slots, found, strict=True):
            if data is not None:
                self.prefetcher.settle(slot)
        return slots

    async def fetch_at_once(self, entries: Sequence[Entry], found: list[bytes | None],
                            slots: Sequence[Slot | None]) -> None:
        """Of a claimed batch, fetch together the files of one small plain chunk that no
        tier holds and nothing fetches yet (:meth:`_fetch_many`), and cache them; each one
        fetched goes into ``found``. Those it could not fetch are left to
        :meth:`read_claimed`, which fails over and retries."""
        picks = self._to_fetch_at_once(entries, found, slots)
        if len(picks) < 2:
            return
        keys = [key for _, key in picks]
        batch = self._flights.begin(keys)
        try:
            datas = await self._fetch_many([entries[i] for i, _ in picks])
            for (i, key), data in zip(picks, datas, strict=True):
                if data is not None:
                    found[i] = data
                    await self._store(entries[i], key, data)
        except BaseException as exc:
            batch.end(None, exc)
            raise
        batch.end(datas)

    def _to_fetch_at_once(self, entries: Sequence[Entry], found: list[bytes | None],
                          slots: Sequence[Slot | None]) -> list[tuple[int, BlockKey]]:
        """The files of a batch to fetch together, ``(index, key)``: not read yet, not
        prefetched, fetchable in one request, not in flight, and (with a cache) missed by
        memory and known not to be on the disk tier; memory hits go into ``found`` on the
        way."""
        picks = [(i, whole_file_key(entry)) for i, entry in enumerate(entries)
                 if found[i] is None and slots[i] is None and small_and_plain(entry)]
        picks = [(i, key) for i, key in picks if key not in self._flights]
        if not self.cache.enabled or not picks:
            return picks
        values = self.cache.memory.get_many([key for _, key in picks])
        missed = []
        for (i, key), value in zip(picks, values, strict=True):
            if value is not None:
                found[i] = bytes(value)
                self._counters.add_all({"cache_hits": 1, "cache_hits_memory": 1})
            else:
                missed.append((i, key))
        if self.cache.disk is not None:  # those the disk holds are read from it, alone
            on_disk = self._ask_disk([key for _, key in missed])
            missed = [(i, key) for i, key in missed if not on_disk[key]]
        self._counters.add("cache_misses", len(missed))
        return missed

    def _ask_disk(self, keys: Sequence[BlockKey]) -> dict[BlockKey, bool]:
        """Whether the disk tier holds each of ``keys``: those not looked up yet
        (:attr:`_on_disk`) are asked about in one index query."""
        known = {key: self._on_disk[key] for key in keys if key in self._on_disk}
        unknown = [key for key in keys if key not in known]
        if len(self._on_disk) + len(unknown) > ON_DISK_MAX:
            self._on_disk.clear()  # (a read whose answer was dropped asks the disk again)
        if unknown:
            found = self.cache.on_disk(unknown)
            known.update((key, key in found) for key in unknown)
            self._on_disk.update((key, key in found) for key in unknown)
        return known

    async def read_claimed(self, entry: Entry, slot: Slot | None) -> bytes:
        """:meth:`read` of a file whose prefetch slot was claimed (and the eviction cursor
        moved) already."""
        data = await self.prefetcher.receive(slot)
        if data is not None:
            self._counters.add("cache_misses")  # it took the network, if ahead of time
            return data
        key = whole_file_key(entry)
        if self._cacheable(entry):
            cached = await self.cache.get(key, disk=self._may_be_on_disk(key))
            if cached is not None:
                return cached
        return await self._single_flight(entry, key)

    def peek_leading(self, entries: Sequence[Entry]) -> list[bytes]:
        """The whole files of ``entries`` a cache tier holds, in order up to the first one
        none holds, read in the calling thread (any thread). The hits must be reported with
        :meth:`consumed_all`, on the loop thread, in read order (:meth:`hits_to_report`).
        The disk is asked about those memory does not hold, and the window's lookups did
        not cover, in one query (the caller may be ahead of the window); the hits are
        counted at once."""
        keys = []
        if self.cache.enabled:
            for entry in entries:
                if not _has_own_bytes(entry):
                    break
                keys.append(whole_file_key(entry))
        return self.cache.get_leading(keys, [self._may_be_on_disk(key) for key in keys])

    def peek_disk(self, keys: Sequence[bytes]) -> list[bytes]:
        """Whole files from the disk tier by their index keys (:func:`disk_keys`), read in
        the calling thread, in order up to the first one it lacks (or a file with no bytes
        of its own). Only while no reads were announced (:meth:`expect_reads`: no hit needs
        reporting) and memory holds nothing: a fresh DataLoader worker of a warm epoch;
        otherwise nothing (read with :meth:`peek_leading`)."""
        if self._expected or self.cache.disk is None or len(self.cache.memory):
            return []
        if NO_DISK_KEY in keys:
            keys = keys[:keys.index(NO_DISK_KEY)]
        return self.cache.disk_leading(keys)

    def hits_to_report(self, paths: Sequence[str]) -> tuple[list[str], bool]:
        """``paths`` were just read from the cache with :meth:`peek_leading` (any thread):
        the hits to report now with :meth:`consumed_all`, in read order, and whether that
        refills the prefetch window. No hits while no prefetch is under way and fewer than
        :data:`LATE_HITS` hits wait.

        Reporting hits moves the prefetch window and the eviction cursor. While every file
        the window reaches is cached (a warm epoch) that finds nothing to fetch, and doing
        it for every batch on the loop thread cost a fresh DataLoader worker ~10% of its
        warm epoch. Hits held back are reported without a refill: the reader is ahead of
        them by then, and the disk lookups of a refill raced its own (a fresh worker's loop
        thread looked up 1,440 files of a 5,000-file share, every one after the reader had).
        The next read that reaches the loop thread refills the window. The client reports
        the hits held back before anything else it sends the loop thread
        (:meth:`late_hits`), so the reads stay in order.

        Until the consumer announces its reads (:meth:`expect_reads`), hits move nothing
        and are not reported at all (a DataLoader worker reading a warm epoch: ~3 ms of
        its loop thread per 5,000 samples)."""
        if not self._expected:
            return [], False
        with self._late_lock:
            self._late_hits.extend(paths)
            busy = self.prefetcher.busy
            if not busy and len(self._late_hits) < LATE_HITS:
                return [], False
            hits, self._late_hits = self._late_hits, []
        return hits, busy

    def late_hits(self) -> list[str]:
        """The hits :meth:`hits_to_report` held back (any thread), to report now with
        :meth:`consumed_all` without a refill (the call that follows them refills)."""
        with self._late_lock:
            hits, self._late_hits = self._late_hits, []
        return hits

    def consumed(self, path: str) -> None:
        """The consumer read ``path`` from the cache itself (:meth:`peek_leading`): move
        the hints."""
        self.consumed_all([path])

    def consumed_all(self, paths: Sequence[str], refill: bool = True) -> None:
        """:meth:`consumed` of a batch, in order (one lock, one refill of the window unless
        ``refill`` is False: see :meth:`hits_to_report`)."""
        self.cache.on_demand_all(paths)
        self._follow_order_all(paths)
        for slot in self.prefetcher.claim_all(paths, refill=refill):
            self.prefetcher.settle(slot)

    def cached_slice(self, entry: Entry, start: int, stop: int) -> bytes | None:
        """A range of a file whose whole content is in memory, without I/O."""
        value = self.cache.memory.get(whole_file_key(entry))
        return None if value is None else bytes(value[start:stop])

    def _follow_order_all(self, paths: Sequence[str]) -> None:
        if self._order is not None and not self._hinted:
            for path in paths:
                self._follow_order(path)

    def _follow_order(self, path: str) -> None:
        if self._order is None or self._hinted:
            return
        upcoming = self._order.observe(path, self.config.prefetch_items)
        if upcoming:
            self.prefetcher.set_hints(upcoming)

    # -- fetching ------------------------------------------------------------------------------

    async def _single_flight(self, entry: Entry, key: BlockKey) -> bytes:
        """Fetch (and cache) the block, or wait for the fetch of it in flight."""
        return await self._flights.run(key, partial(self._fetch_and_store, entry, key))

    async def _fetch_and_store(self, entry: Entry, key: BlockKey) -> bytes:
        data = await self._download(entry)
        await self._store(entry, key, data)
        return data

    async def _store(self, entry: Entry, key: BlockKey, data: bytes) -> None:
        if self._cacheable(entry):
            expires = entry.mtime + entry.ttl_sec if entry.ttl_sec else None
            await self.cache.put(key, data, expires_at=expires)
            self._on_disk.pop(key, None)  # on its way there: ask again if memory drops it

    async def _prefetch(self, path: str) -> bytes:
        entry = await self.entry(path)
        key = whole_file_key(entry)
        if self._cacheable(entry):  # cached after all: read meanwhile, or not looked up
            # (a file just looked up as the window reached it is not asked about again)
            cached = await self.cache.get(key, count_miss=False, promote=True,
                                          disk=self._may_be_on_disk(key))
            if cached is not None:
                return cached
        return await self._single_flight(entry, key)

    def _needs_fetch(self, path: str) -> bool:
        """Whether the prefetcher must fetch a hinted file: not when a tier holds it."""
        entry = self._hinted.get(path)
        if entry is None:
            return True
        key = whole_file_key(entry)
        if key in self.cache.memory:
            return False
        if self.cache.disk is None:
            return True
        if key not in self._on_disk:
            self._look_ahead_on_disk()
        return not self._on_disk.get(key, False)

    def _may_be_on_disk(self, key: BlockKey) -> bool:
        """False for a hinted file the disk tier did not hold when the window reached it:
        reads (prefetch, demand or a peek from another thread) then skip its index query."""
        return self._on_disk.get(key) is not False

    def _look_ahead_on_disk(self) -> None:
        """Learn which of the next hinted files the disk tier holds, in one index query for
        :data:`DISK_LOOKAHEAD` of them, as the prefetch window reaches them: by then many
        are in memory and need no lookup (a worker's next epoch: all it read this one).
        Reads of these files trust the answer (:meth:`_may_be_on_disk`; an index query per
        file was ~7% of a worker's CPU samples in a cold epoch): a file another process
        stores in the short while between its lookup and its read is fetched once more."""
        if len(self._on_disk) > 4 * (self.prefetcher.depth + DISK_LOOKAHEAD):
            self._on_disk.clear()  # behind the window by now; an item asked again is looked up
        upcoming = (self._hinted.get(p) for p in self.prefetcher.upcoming(
            self.prefetcher.depth + DISK_LOOKAHEAD))
        keys = dict.fromkeys(whole_file_key(e) for e in upcoming
                             if e is not None and _has_own_bytes(e))
        self._ask_disk(self.cache.memory.missing(keys))

    def _size_of(self, path: str) -> int:
        entry = self._hinted.get(path)
        return entry.size if entry is not None else 0

    def _cacheable(self, entry: Entry) -> bool:
        return self.cache.enabled and _has_own_bytes(entry)

    def close(self) -> None:
        self.prefetcher.clear()  # (demand reads in flight fail as the connections close)
        self.cache.close()
