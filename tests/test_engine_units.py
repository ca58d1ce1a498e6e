"""Unit and property tests of the engine's scheduling parts: limiter, prefetcher, patterns,
range coalescing. (The storage path is exercised against real servers elsewhere.)"""

import asyncio
import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from seaweed_data.core.aggregate import coalesce, split
from seaweed_data.core.items import whole_file_key
from seaweed_data.core.limiter import PriorityLimiter, is_prefetch, prefetching
from seaweed_data.core.metrics import Counters
from seaweed_data.core.patterns import OrderDetector, Pattern, ReadPattern
from seaweed_data.core.prefetch import Prefetcher


def test_priority_limiter_serves_demand_before_prefetch():
    async def go() -> list[str]:
        limiter = PriorityLimiter(1)
        order: list[str] = []
        gate = asyncio.Event()

        async def holder() -> None:
            async with limiter.slot():
                await gate.wait()

        async def user(name: str, prefetch: bool) -> None:
            if prefetch:
                with prefetching():
                    assert is_prefetch()
                    async with limiter.slot():
                        order.append(name)
            else:
                assert not is_prefetch()
                async with limiter.slot():
                    order.append(name)

        first = asyncio.ensure_future(holder())
        await asyncio.sleep(0)
        tasks = [asyncio.ensure_future(user("p1", True)), asyncio.ensure_future(user("p2", True))]
        await asyncio.sleep(0)
        tasks.append(asyncio.ensure_future(user("d1", False)))
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, *tasks)
        return order

    assert asyncio.run(go()) == ["d1", "p1", "p2"]


def test_priority_limiter_cancelled_waiter_frees_nothing_twice():
    async def go() -> int:
        limiter = PriorityLimiter(1)
        async with limiter.slot():
            waiter = asyncio.ensure_future(limiter._acquire(0))
            await asyncio.sleep(0)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        async with limiter.slot():
            pass
        return limiter._free

    assert asyncio.run(go()) == 1


class FakeStore:
    """Items whose bytes are their names, fetched after a delay; counts fetches."""

    def __init__(self, delay: float = 0.001) -> None:
        self.delay, self.fetched, self.active, self.peak = delay, [], 0, 0

    async def fetch(self, item: str) -> bytes:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay)
            self.fetched.append(item)
            return item.encode() * 10
        finally:
            self.active -= 1


def make_prefetcher(store, counters, depth=4, budget=10_000, needed=lambda i: True):
    return Prefetcher(store.fetch, needed, lambda i: 10 * len(i), counters, depth=depth,
                      budget_bytes=budget, timeout=5)


def test_prefetcher_follows_hints_exactly():
    async def go() -> Counters:
        store, counters = FakeStore(), Counters()
        prefetcher = make_prefetcher(store, counters)
        items = [f"item{i:03d}" for i in range(50)]
        prefetcher.set_hints(items)
        for item in items:
            data = await prefetcher.take(item)
            assert data == item.encode() * 10
            assert len(prefetcher._slots) <= 4
        assert sorted(store.fetched) == items
        return counters

    counters = asyncio.run(go())
    assert counters.get("prefetch_issued") == 50
    assert counters.get("prefetch_used") == 50
    assert counters.get("prefetch_wasted") == 0


def test_prefetcher_budget_bounds_bytes_ahead():
    async def go() -> None:
        store, counters = FakeStore(), Counters()
        prefetcher = make_prefetcher(store, counters, depth=100, budget=200)  # 2.5 items
        prefetcher.set_hints([f"item{i:03d}" for i in range(20)])
        assert prefetcher.bytes_ahead <= 200 and len(prefetcher._slots) == 2
        for i in range(20):
            assert prefetcher.bytes_ahead <= 200
            await prefetcher.take(f"item{i:03d}")

    asyncio.run(go())


def test_replacing_hints_cancels_stale_prefetches_and_counts_waste():
    async def go() -> Counters:
        store, counters = FakeStore(delay=0.05), Counters()
        prefetcher = make_prefetcher(store, counters, depth=4)
        prefetcher.set_hints(["a", "b", "c", "d"])
        await asyncio.sleep(0)
        prefetcher.set_hints(["x", "y", "a"])
        assert set(prefetcher._slots) == {"x", "y", "a"}
        await asyncio.sleep(0.1)
        assert "b" not in store.fetched  # cancelled before it finished
        for item in ("x", "y", "a"):
            assert await prefetcher.take(item) is not None
        return counters

    counters = asyncio.run(go())
    assert counters.get("prefetch_wasted") == 3 and counters.get("prefetch_used") == 3


def test_unannounced_and_skipped_reads():
    async def go() -> Counters:
        store, counters = FakeStore(), Counters()
        prefetcher = make_prefetcher(store, counters, depth=3)
        prefetcher.set_hints(["a", "b", "c", "d", "e"])
        assert await prefetcher.take("zzz") is None  # not announced: the consumer reads it
        await asyncio.sleep(0.01)
        assert await prefetcher.take("c") is not None  # a and b were skipped
        assert prefetcher.hints == ["d", "e"]
        return counters

    counters = asyncio.run(go())
    assert counters.get("prefetch_wasted") == 2


def test_late_consumer_waits_for_the_same_fetch():
    async def go() -> tuple[Counters, FakeStore]:
        store, counters = FakeStore(delay=0.05), Counters()
        prefetcher = make_prefetcher(store, counters, depth=2)
        prefetcher.set_hints(["a", "b"])
        assert await prefetcher.take("a") == b"a" * 10
        return counters, store

    counters, store = asyncio.run(go())
    assert counters.get("prefetch_late") == 1 and store.fetched.count("a") == 1


def test_failed_prefetch_is_left_to_the_consumer():
    async def go() -> Counters:
        counters = Counters()

        async def broken(item: str) -> bytes:
            raise OSError("network down")

        prefetcher = Prefetcher(broken, lambda i: True, lambda i: 1, counters, depth=2,
                                budget_bytes=100, timeout=1)
        prefetcher.set_hints(["a"])
        assert await prefetcher.take("a") is None
        return counters

    assert asyncio.run(go()).get("prefetch_wasted") == 1


def test_cached_items_are_not_prefetched():
    async def go() -> FakeStore:
        store = FakeStore()
        prefetcher = make_prefetcher(store, Counters(), needed=lambda i: i != "b")
        prefetcher.set_hints(["a", "b", "c"])
        for item in ("a", "b", "c"):
            await prefetcher.take(item)
        return store

    assert asyncio.run(go()).fetched == ["a", "c"]


def test_the_same_order_told_again_continues_and_cached_items_are_asked_again():
    async def go() -> tuple[FakeStore, list[str]]:
        store = FakeStore()
        asked: list[str] = []

        def needed(item: str) -> bool:
            asked.append(item)
            return item != "b"  # cached: not fetched, remembered only while in the window

        prefetcher = make_prefetcher(store, Counters(), depth=2, needed=needed)
        prefetcher.set_hints(["a", "b", "c"])
        await prefetcher.take("a")
        assert prefetcher.continued_by(["b", "c", "a", "b"]) == 2
        assert prefetcher.continued_by(["c", "b"]) is None  # another order
        assert prefetcher.continued_by(["b"]) is None  # shorter than what is ahead
        prefetcher.extend_hints(["a", "b"])
        for item in ("b", "c", "a", "b"):
            await prefetcher.take(item)
        assert prefetcher.continued_by(["x"]) == 0  # nothing ahead: anything continues it
        return store, asked

    store, asked = asyncio.run(go())
    assert store.fetched == ["a", "c", "a"]
    assert asked.count("b") == 2  # asked again in the next epoch, not assumed still cached


def test_claiming_a_cached_batch_at_once_is_claiming_it_item_by_item():
    """What ``consumed_all`` does with a batch the consumer read from the cache."""
    batch = ["i0", "i1", "i3"]  # i2 skipped

    async def go() -> tuple[list[list[str]], Counters]:
        runs: list[list[str]] = []
        counters = Counters()
        for bulk in (False, True):
            prefetcher = make_prefetcher(FakeStore(), counters, depth=3,
                                         needed=lambda i: i not in batch)
            prefetcher.set_hints([f"i{n}" for n in range(8)])
            await asyncio.sleep(0.01)
            if bulk:
                slots = prefetcher.claim_all(batch)
            else:
                slots = [prefetcher.claim(item) for item in batch]
            assert slots == [None, None, None]  # cached: never fetched
            runs.append(sorted(prefetcher._slots))
            assert prefetcher.hints == [f"i{n}" for n in range(4, 8)]
        return runs, counters

    runs, counters = asyncio.run(go())
    assert runs == [["i4", "i5", "i6"]] * 2
    assert counters.get("prefetch_wasted") == 2  # i2, once per run


def test_order_detector_sequential_restart_and_random():
    order = [f"f{i}" for i in range(10)]
    detector = OrderDetector(order)
    assert detector.observe("f0", 3) == []
    assert detector.observe("f1", 3) == []
    assert detector.observe("f2", 3) == []
    assert detector.observe("f3", 3) == ["f4", "f5", "f6"]
    for i in range(4, 10):
        detector.observe(f"f{i}", 3)
    assert detector.observe("f0", 3) == ["f1", "f2", "f3"]  # epoch restart stays sequential
    assert detector.observe("f8", 3) == [] and detector.observe("unknown", 3) == []
    assert detector.observe("f9", 2) == []


def test_random_orders_trigger_almost_no_prefetching():
    order = [f"f{i}" for i in range(2000)]
    detector = OrderDetector(order)
    rng = random.Random(1)
    hinted = 0
    for _ in range(3):
        for item in rng.sample(order, len(order)):
            hinted += len(detector.observe(item, 8))
    assert hinted <= 0.05 * 3 * len(order)


def test_read_pattern_windows():
    pattern = ReadPattern(min_window=100, max_window=800)
    assert pattern.observe(0, 10) is Pattern.UNKNOWN
    assert pattern.observe(10, 10) is Pattern.SEQUENTIAL and pattern.window == 100
    pattern.observe(20, 10)
    pattern.observe(30, 10)
    pattern.observe(40, 10)
    assert pattern.window == 800  # doubled up to the cap
    pattern.wasted()
    assert pattern.window == 400
    assert pattern.observe(1000, 10) is Pattern.RANDOM and pattern.window == 0
    assert pattern.observe(2000, 10) is Pattern.RANDOM
    assert pattern.observe(3000, 10) is Pattern.STRIDED


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 200)), max_size=30),
       st.integers(0, 100))
def test_coalesce_serves_every_range_exactly(raw, gap):
    data = bytes(random.Random(0).randbytes(1300))
    ranges = [(start, start + length) for start, length in raw]
    spans = coalesce(ranges, gap)
    for left, right in itertools.pairwise(spans):
        assert right.start - left.stop > gap  # merged whenever close enough
    payloads = [data[s.start:s.stop] for s in spans]
    assert split(spans, payloads, ranges) == [data[a:b] for a, b in ranges]
    assert sum(len(s.members) for s in spans) == sum(1 for a, b in ranges if b > a)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h"]), min_size=1,
                max_size=40),
       st.lists(st.tuples(st.booleans(), st.integers(0, 39)), max_size=40),
       st.integers(1, 6), st.integers(10, 200))
def test_prefetcher_never_exceeds_its_budgets(hints, reads, depth, budget):
    """Random hint replacements and reads: items and bytes ahead stay within the limits."""
    async def go() -> None:
        store, counters = FakeStore(delay=0), Counters()
        prefetcher = Prefetcher(store.fetch, lambda i: True, lambda i: 10, counters,
                                depth=depth, budget_bytes=budget, timeout=5)
        prefetcher.set_hints(hints)
        for replace, index in reads:
            if replace:
                prefetcher.set_hints(hints[index % len(hints):])
            else:
                await prefetcher.take(hints[index % len(hints)])
            assert len(prefetcher._slots) <= depth
            assert prefetcher.bytes_ahead <= max(budget, 10)
            await asyncio.sleep(0)
        prefetcher.clear()
        issued = counters.get("prefetch_issued")
        assert counters.get("prefetch_used") + counters.get("prefetch_wasted") == issued

    asyncio.run(go())


def test_hash_memos_give_the_same_names_and_stay_bounded():
    import hashlib

    from seaweed_data.core.cache import disk_layout, keys

    key = keys.BlockKey("/data/a.jpg", "v1", 0, 10)
    expected = hashlib.blake2b(b"/data/a.jpg\0v1\0" + b"0\0" + b"10", digest_size=20).hexdigest()
    assert key.digest == expected and key.digest == expected  # computed, then remembered
    entry = disk_layout.entry_key(expected)
    assert entry == hashlib.blake2b(expected.encode(), digest_size=20,
                                    person=b"seaweed-disk-v2").digest()
    assert disk_layout.entry_key(expected) == entry
    for i in range(keys.MEMO_SIZE + 10):
        disk_layout.entry_key(keys.BlockKey(f"/data/{i}", "v", 0, 1).digest)
    assert len(keys._DIGESTS) <= keys.MEMO_SIZE
    assert len(disk_layout._ENTRY_KEYS) <= keys.MEMO_SIZE
    assert key.digest == expected and disk_layout.entry_key(expected) == entry


def single_flight_reads(download, fetch_many=None, memory=0):
    """An ``ItemReads`` without a disk tier whose fetches are ``download(entry)`` (and
    ``fetch_many(entries)`` for batches)."""
    from seaweed_data.config import Config
    from seaweed_data.core.items import ItemReads

    async def nothing(paths):
        return {}

    return ItemReads(Config(memory_cache_bytes=memory), Counters(), None, download, nothing,
                     fetch_many)


def test_concurrent_reads_of_a_file_share_one_fetch_and_its_error():
    from seaweed_data.core.entry import Entry

    async def go() -> tuple[list[object], list[str]]:
        fetched: list[str] = []

        async def download(entry: Entry) -> bytes:
            fetched.append(entry.path)
            await asyncio.sleep(0.02)
            if entry.path == "/bad":
                raise OSError("volume server down")
            return entry.path.encode()

        reads = single_flight_reads(download)
        good, bad = Entry("/good", 5, False), Entry("/bad", 4, False)
        outcomes = await asyncio.gather(*(reads.read(e) for e in (good, good, bad, bad)),
                                        return_exceptions=True)
        return outcomes, fetched

    outcomes, fetched = asyncio.run(go())
    assert outcomes[:2] == [b"/good", b"/good"]
    assert all(isinstance(o, OSError) and "down" in str(o) for o in outcomes[2:])
    assert sorted(fetched) == ["/bad", "/good"]  # one fetch each


def test_a_reader_left_waiting_by_a_cancelled_fetch_fetches_itself():
    """The first reader runs the fetch; when it is cancelled (a prefetch that fell out of
    the window), a reader that joined it is not: it fetches the file again."""
    from seaweed_data.core.entry import Entry

    async def go() -> tuple[bytes, bool, int]:
        fetches = 0

        async def download(entry: Entry) -> bytes:
            nonlocal fetches
            fetches += 1
            await asyncio.sleep(0.05)
            return b"data"

        reads = single_flight_reads(download)
        entry = Entry("/f", 4, False)
        first = asyncio.ensure_future(reads.read(entry))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(reads.read(entry))
        await asyncio.sleep(0.01)
        first.cancel()
        data = await second
        return data, first.cancelled(), fetches

    data, first_cancelled, fetches = asyncio.run(go())
    assert data == b"data" and first_cancelled and fetches == 2


def test_a_batch_fetches_together_what_nothing_holds_and_reads_the_rest_alone():
    """fetch_at_once takes the files of a claimed batch that are not read yet, not in
    memory and not in flight, in one fetch; a file it could not fetch is read alone (and
    a read of it meanwhile waits for the batch, then reads it itself)."""
    from seaweed_data.core.entry import Chunk, Entry

    def entry(name: str) -> Entry:
        return Entry(f"/{name}", 4, False, chunks=(Chunk(f"3,{len(name):x}01", 0, 4),))

    async def go():
        batches, alone = [], []

        async def fetch_many(entries):
            batches.append([e.path for e in entries])
            await asyncio.sleep(0.02)
            return [None if e.path == "/lost" else e.path[1:].encode() for e in entries]

        async def download(e):
            alone.append(e.path)
            return b"again"

        reads = single_flight_reads(download, fetch_many, memory=1 << 20)
        files = [entry(n) for n in ("seen", "mem", "a", "lost", "b", "huge")]
        files[-1] = Entry("/huge", 1 << 20, False, chunks=(Chunk("3,ff01", 0, 1 << 20),))
        await reads.cache.put(whole_file_key(files[1]), b"from memory")
        found = [b"read already", None, None, None, None, None]
        slots = reads.claim_batch(files, found)
        batch = asyncio.ensure_future(reads.fetch_at_once(files, found, slots))
        await asyncio.sleep(0.005)
        meanwhile = await reads.read(files[3])  # joins the batch's fetch of /lost
        await batch
        return batches, alone, found, meanwhile, reads._counters

    batches, alone, found, meanwhile, counters = asyncio.run(go())
    assert batches == [["/a", "/lost", "/b"]]  # not /huge (too big for one request)
    assert found == [b"read already", b"from memory", b"a", None, b"b", None]
    assert meanwhile == b"again" and alone == ["/lost"]
    assert counters.get("cache_misses") == 3 + 1 and counters.get("cache_hits_memory") == 1


def test_a_batch_fetch_that_fails_fails_the_reads_waiting_for_it():
    from seaweed_data.core.entry import Chunk, Entry

    async def go():
        async def fetch_many(entries):
            await asyncio.sleep(0.02)
            raise OSError("network down")

        async def download(e):
            raise AssertionError("not read alone")

        reads = single_flight_reads(download, fetch_many)
        files = [Entry(f"/{n}", 4, False, chunks=(Chunk(f"3,{n}01", 0, 4),)) for n in "ab"]
        found = [None, None]
        batch = asyncio.ensure_future(
            reads.fetch_at_once(files, found, reads.claim_batch(files, found)))
        await asyncio.sleep(0.005)
        joined = asyncio.ensure_future(reads.read(files[1]))
        return await asyncio.gather(batch, joined, return_exceptions=True)

    outcomes = asyncio.run(go())
    assert all(isinstance(o, OSError) and "down" in str(o) for o in outcomes)


def test_hits_are_reported_only_once_reads_were_announced():
    """Without hints or an order, cache hits move nothing: they are not even held back."""

    async def never(entry):
        raise AssertionError("nothing is fetched")

    reads = single_flight_reads(never)
    paths = [f"/{i}" for i in range(300)]
    assert reads.hits_to_report(paths) == ([], False) and reads.late_hits() == []
    reads.expect_reads()
    assert reads.hits_to_report(paths[:10]) == ([], False)  # held back (no prefetch busy)
    assert reads.hits_to_report(paths) == (paths[:10] + paths, False)  # past LATE_HITS


def test_closing_the_locations_ends_the_lookups_in_flight():
    from seaweed_data.config import Config
    from seaweed_data.core.volumes import VolumeLocations

    async def go():
        async def masters():
            await asyncio.sleep(30)  # a master that never answers
            return []

        locations = VolumeLocations(None, masters, Config())
        lookup = asyncio.ensure_future(locations.lookup("7", "/f"))
        await asyncio.sleep(0.01)
        await locations.close()
        await asyncio.gather(lookup, return_exceptions=True)
        return lookup.cancelled(), locations._pending

    cancelled, pending = asyncio.run(go())
    assert cancelled and pending == {}
