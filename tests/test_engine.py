"""The engine against a real SeaweedFS: hints, prefetch precision, cache reuse, future-aware
eviction, readahead, aggregation, single-flight. Counters, not timings."""

import asyncio
import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from seaweed_data.core.loop import LOOP

SIZES = [random.Random(i).randrange(8_000, 40_000) for i in range(240)]


@pytest.fixture(scope="module")
def dataset(cluster):
    files = {f"/engine/data/{i:04d}.bin": os.urandom(size) for i, size in enumerate(SIZES)}
    with cluster.client() as client:
        for path, data in files.items():
            client.write(path, data)
    return files


def epoch_order(paths, epoch):
    order = list(paths)
    random.Random(1000 + epoch).shuffle(order)
    return order


def run_epochs(client, files, epochs, hints=True):
    paths = sorted(files)
    for epoch in range(epochs):
        order = epoch_order(paths, epoch)
        if hints:
            client.set_hints(order, epoch_order(paths, epoch + 1))
        for path in order:
            assert client.read(path) == files[path]


def fill_disk_tier(cluster, dataset, paths, disk):
    """Read ``paths`` through a client with the disk tier ``disk``; every file is on it after."""
    with cluster.client(disk_cache_dir=disk) as client:
        assert client.read_many(paths) == [dataset[p] for p in paths]
        client.flush()


def count_disk_queries(client):
    """The sizes of the disk-tier index queries ``client`` makes from now on (a list that
    grows)."""
    disk = client._async().items.cache.disk
    disk.has("")  # connected: the index is in place
    asked = []
    locate_many, lookup = disk._index.locate_many, disk._index.lookup
    disk._index.locate_many = lambda keys, now: asked.append(len(keys)) or locate_many(keys,
                                                                                        now)
    disk._index.lookup = lambda key: asked.append(1) or lookup(key)
    return asked


def test_hinted_reads_prefetch_precisely(cluster, dataset):
    with cluster.client(prefetch_items=16) as client:
        run_epochs(client, dataset, 1)
        stats = client.stats()
    assert stats["prefetch_issued"] >= 0.9 * len(dataset)
    assert stats["prefetch_used"] / stats["prefetch_issued"] >= 0.99
    assert stats["bytes_fetched"] == sum(SIZES)  # each file fetched exactly once


def test_stats_count_the_cache_hits_reported_to_a_busy_loop_thread(cluster, dataset):
    """read_entries reports cache hits to the loop thread without waiting; stats() waits
    for them, so a busy loop thread never makes the counters come out short."""
    from seaweed_data.core.loop import LOOP

    paths = sorted(dataset)[:16]
    with cluster.client(prefetch_items=16) as client:
        entries = [client.stat(p) for p in paths]
        client.set_hints(paths)
        client.flush()  # (waits on the loop thread: the hinted prefetches have started)
        for _ in range(200):  # until every prefetch has stored its file in memory
            if len(client._async().items.peek_leading(entries)) == len(entries):
                break
            time.sleep(0.01)
        LOOP.post(time.sleep, 0.3)  # the loop thread is busy for a while
        assert client.read_entries(entries) == [dataset[p] for p in paths]  # all hits
        stats = client.stats()
    assert stats["prefetch_used"] == stats["prefetch_issued"] == len(paths)


def test_second_pass_with_a_cache_that_holds_the_data_fetches_almost_nothing(cluster, dataset):
    with cluster.client() as client:
        run_epochs(client, dataset, 1)
        first = client.stats()["bytes_fetched"]
        run_epochs(client, dataset, 1)
        second = client.stats()["bytes_fetched"] - first
        stats = client.stats()
    assert second <= 0.01 * first
    assert stats["cache_hits_memory"] >= len(dataset)


def test_batches_of_cache_hits_are_served_in_the_calling_thread(cluster, dataset, tmp_path):
    """read_entries serves hits without waiting for the loop thread, yet the hints move on:
    a fresh client on a warm disk tier fetches nothing, and its prefetcher neither issues
    fetches for what the disk holds nor stalls behind the batches it never saw."""
    paths = sorted(dataset)
    disk = str(tmp_path / "cache")
    with cluster.client(disk_cache_dir=disk) as client:
        run_epochs(client, dataset, 1)
    with cluster.client(disk_cache_dir=disk) as client:
        entries = [client.stat(p) for p in paths]
        client.set_hints(paths)
        for start in range(0, len(paths), 8):
            batch = entries[start:start + 8]
            assert client.read_entries(batch) == [dataset[e.path] for e in batch]
        client.read(paths[0])  # a loop-thread call: every posted batch has been taken in
        stats = client.stats()
        assert client._async().items.prefetcher.hints == []  # the window followed the reads
    assert stats["bytes_fetched"] == 0 and stats["prefetch_issued"] == 0
    assert stats["cache_hits_disk"] == len(paths) + 1  # the last read too: not kept in memory


def test_background_hints_come_before_the_reads_that_follow(cluster, dataset):
    """set_hints(background=True) returns at once, yet with every entry known the hints
    are in place before the next call: the epoch is prefetched exactly, one fetch a file."""
    paths = epoch_order(sorted(dataset), 0)
    with cluster.client(prefetch_items=16) as client:
        entries = {p: client.stat(p) for p in paths}
        client.set_hints(paths, known=entries, background=True)
        for start in range(0, len(paths), 8):
            batch = [entries[p] for p in paths[start:start + 8]]
            assert client.read_entries(batch) == [dataset[e.path] for e in batch]
        stats = client.stats()
    assert stats["prefetch_issued"] >= 0.9 * len(paths)
    assert stats["prefetch_used"] / stats["prefetch_issued"] >= 0.99
    assert stats["bytes_fetched"] == sum(SIZES)


def test_background_hints_without_entries_warm_them_and_log_a_failure(cluster, dataset,
                                                                       caplog):
    paths = sorted(dataset)[:40]
    with cluster.client(prefetch_items=8) as client:
        client.set_hints(paths, background=True)  # metadata first, in a task
        for _ in range(500):
            if all(client._async().items.is_hinted(p) for p in paths):
                break
            time.sleep(0.01)
        assert all(client._async().items.is_hinted(p) for p in paths)
        assert [client.read(p) for p in paths] == [dataset[p] for p in paths]
        assert client.stats()["prefetch_used"] >= len(paths) - 8

        async def broken(_paths):
            raise ConnectionError("filer gone")
        client._async().items._warm = broken
        client.set_hints(paths[::-1], background=True)
        for _ in range(500):
            if "prefetch hints were not applied" in caplog.text:
                break
            time.sleep(0.01)
        assert client.read(paths[-1]) == dataset[paths[-1]]  # reads go on
        client.set_hints(["http://elsewhere:1/x"], background=True)  # read on the loop thread
        client.settle()
        assert client.read(paths[0]) == dataset[paths[0]]
    assert "prefetch hints were not applied: filer gone" in caplog.text
    assert "another filer" in caplog.text or "elsewhere" in caplog.text


def test_the_disk_is_asked_about_hinted_files_as_the_window_reaches_them(cluster, dataset,
                                                                         tmp_path):
    """One index query for the next few dozen hinted files as the prefetch window reaches
    them, none for files memory holds by then (a worker's next epoch)."""
    from seaweed_data.core.items import DISK_LOOKAHEAD

    paths = sorted(dataset)
    disk = str(tmp_path / "cache")
    with cluster.client(disk_cache_dir=disk) as client:
        run_epochs(client, dataset, 1)
        client.flush()
        asked = count_disk_queries(client)
        run_epochs(client, dataset, 1)  # all in memory: no lookup
        assert asked == [] and client.stats()["cache_hits_memory"] >= len(paths)
    with cluster.client(disk_cache_dir=disk, prefetch_items=16) as fresh:
        asked = count_disk_queries(fresh)
        run_epochs(fresh, dataset, 1)
        stats = fresh.stats()
    assert stats["bytes_fetched"] == 0 and stats["prefetch_issued"] == 0
    assert len(asked) <= len(paths) // DISK_LOOKAHEAD + 1 and sum(asked) == len(paths)


def test_a_batch_read_prefetches_only_what_follows_it(cluster, dataset):
    """read_entries moves the prefetch window past its whole batch before reading it: the
    batch's own files are read on demand (concurrently), and the window's prefetches are the
    files after it, every one of them used by the next batch. (Claimed file by file, the
    window refilled with files of the same batch: every cold file went through a prefetch
    as well as a demand read.)"""
    paths = sorted(dataset)[:96]
    batch, depth = 32, 8
    with cluster.client(prefetch_items=depth) as client:
        entries = {p: client.stat(p) for p in paths}
        client.set_hints(paths, (), entries)
        for start in range(0, len(paths), batch):
            chunk = [entries[p] for p in paths[start:start + batch]]
            assert client.read_entries(chunk) == [dataset[p] for p in paths[start:start + batch]]
        stats = client.stats()
    # the window before the first batch, then the one after each of the first two batches
    assert stats["prefetch_issued"] == 3 * depth
    assert stats["prefetch_used"] == 3 * depth
    assert stats["bytes_fetched"] == sum(len(dataset[p]) for p in paths)


def test_a_cold_batch_fetches_what_the_disk_lacks_and_reads_the_rest_from_it(cluster, dataset,
                                                                             tmp_path):
    """A batch partly on the disk tier: whether the disk holds its files is asked in a
    query or two for the whole batch (not one per file); those it holds are read from it,
    the others fetched together, each exactly once."""
    paths = sorted(dataset)[:40]
    on_disk = paths[10:20]
    disk = str(tmp_path / "cache")
    fill_disk_tier(cluster, dataset, on_disk, disk)
    with cluster.client(disk_cache_dir=disk) as client:
        entries = [client.stat(p) for p in paths]
        asked = count_disk_queries(client)
        assert client.read_entries(entries) == [dataset[p] for p in paths]
        stats = client.stats()
    assert len(asked) <= 2
    assert stats["cache_hits_disk"] == len(on_disk)
    assert stats["bytes_fetched"] == sum(len(dataset[p]) for p in paths if p not in on_disk)
    assert stats["volume_requests"] == len(paths) - len(on_disk)


@pytest.mark.parametrize("prefetch_next", [True, False])
def test_disk_hits_are_not_copied_into_memory(cluster, dataset, tmp_path, prefetch_next):
    """Whether or not the process reads on (prefetch_next), what it reads from the disk tier
    stays there: the page cache holds it for every process, a copy in memory would cost its
    page faults. Reading it again is a disk hit again, fetching nothing."""
    paths = sorted(dataset)[:60]
    disk = str(tmp_path / "cache")
    fill_disk_tier(cluster, dataset, paths, disk)
    with cluster.client(disk_cache_dir=disk) as client:
        entries = {p: client.stat(p) for p in paths}
        client.set_hints(paths, paths[::-1], entries, prefetch_next=prefetch_next)
        assert client.read_entries([entries[p] for p in paths]) == [dataset[p] for p in paths]
        assert len(client._async().items.cache.memory) == 0
        assert [client.read(p) for p in paths[::-1]] == [dataset[p] for p in paths[::-1]]
        stats = client.stats()
        in_memory = len(client._async().items.cache.memory)
    assert stats["cache_hits_disk"] == 2 * len(paths) and stats["bytes_fetched"] == 0
    assert in_memory == 0


@pytest.mark.parametrize("disk_tier", [True, False])
def test_with_a_disk_tier_memory_keeps_only_what_the_hints_read_again(cluster, dataset,
                                                                     tmp_path, disk_tier):
    """An epoch fetched with the next epoch's order told (for eviction only): with a disk
    tier, a file is dropped from memory once read unless the next epoch reads it; without
    one, memory keeps everything it can (nothing else would)."""
    paths = sorted(dataset)[:80]
    later = paths[10:30]  # the part of the next epoch this process reads
    disk = str(tmp_path / "cache") if disk_tier else None
    with cluster.client(disk_cache_dir=disk, prefetch_items=8) as client:
        entries = {p: client.stat(p) for p in paths}
        client.set_hints(paths, later, entries, prefetch_next=False)
        for start in range(0, len(paths), 8):
            chunk = [entries[p] for p in paths[start:start + 8]]
            assert client.read_entries(chunk) == [dataset[p] for p in paths[start:start + 8]]
        assert client.read(later[0]) == dataset[later[0]]  # every earlier read is reported
        kept = {key.item for key in client._async().items.cache.memory}
        stats = client.stats()
    assert kept == set(later if disk_tier else paths)
    assert stats["bytes_fetched"] == sum(len(dataset[p]) for p in paths)


def test_a_batch_of_disk_hits_asks_the_index_once(cluster, dataset, tmp_path):
    """read_entries without hints: whether the disk holds the batch is one query, the hits
    are counted at once; a file fetched after that answer is looked up again once memory
    no longer holds it (it went to the disk meanwhile)."""
    paths = sorted(dataset)[:8]
    disk = str(tmp_path / "cache")
    fill_disk_tier(cluster, dataset, paths, disk)
    with cluster.client(disk_cache_dir=disk) as client:
        entries = [client.stat(p) for p in paths]
        asked, single = count_disk_queries(client), []
        index = client._async().items.cache.disk._index
        lookup = index.lookup
        index.lookup = lambda key: single.append(key) or lookup(key)
        assert client.read_entries(entries) == [dataset[p] for p in paths]
        stats = client.stats()
        assert asked == [8] and single == []
        assert stats["cache_hits"] == stats["cache_hits_disk"] == 8
    new = sorted(dataset)[8]
    with cluster.client(disk_cache_dir=disk, memory_cache_bytes=0) as client:
        entry = client.stat(new)
        assert client.read_entries([entry]) == [dataset[new]]  # not on disk: fetched
        client.flush()
        assert client.read_entries([entry]) == [dataset[new]]  # memory holds nothing
        stats = client.stats()
    assert stats["bytes_fetched"] == len(dataset[new]) and stats["cache_hits_disk"] == 1


def record_reports(client):
    """What ``client`` reports to the loop thread from now on: ("hits", n) per report of
    cache hits, ("hints", n) per hints applied, in the order the loop thread gets them."""
    items = client._async().items
    reports = []
    consumed_all, use_hints = items.consumed_all, items.use_hints
    items.consumed_all = lambda paths, refill=True: reports.append(
        ("hits", len(paths))) or consumed_all(paths, refill)
    items.use_hints = lambda paths, *a, **k: reports.append(("hints", len(paths))) or \
        use_hints(paths, *a, **k)
    return reports


def test_hits_are_reported_late_while_nothing_is_prefetched(cluster, dataset, tmp_path,
                                                            monkeypatch):
    """A warm epoch read in batches: with no prefetch under way, the loop thread hears of
    cache hits every LATE_HITS, not every batch, and of the rest before anything else
    reaches it (new hints here): every hit is reported, in order. Such reports do not
    refill the prefetch window: the disk is asked about each file once, by the first
    window (set with the hints) or by the reader."""
    from seaweed_data.core import items

    LATE_HITS = 64
    monkeypatch.setattr(items, "LATE_HITS", LATE_HITS)
    paths = epoch_order(sorted(dataset), 0)
    disk = str(tmp_path / "cache")
    fill_disk_tier(cluster, dataset, paths, disk)
    batch = 8
    assert len(paths) % LATE_HITS > 0
    with cluster.client(disk_cache_dir=disk, prefetch_items=4) as client:
        entries = {p: client.stat(p) for p in paths}
        asked = count_disk_queries(client)
        client.set_hints(paths, (), entries, prefetch_next=False)
        reports = record_reports(client)
        for start in range(0, len(paths), batch):
            chunk = [entries[p] for p in paths[start:start + batch]]
            assert client.read_entries(chunk) == [dataset[p] for p in paths[start:start + batch]]
            LOOP.run(asyncio.sleep(0))  # what was reported is handled before the next read
        late = len(paths) % LATE_HITS
        assert reports == [("hits", LATE_HITS)] * (len(paths) // LATE_HITS)
        assert asked[0] == 4 + items.DISK_LOOKAHEAD  # the first window
        assert sum(asked) == len(paths) and max(asked[1:]) <= batch  # then the reader's
        client.set_hints(paths[:5], (), entries, background=True)
        client.settle()
        assert reports[-2:] == [("hits", late), ("hints", 5)]
        stats = client.stats()
    assert stats["prefetch_issued"] == 0 and stats["cache_hits_disk"] == len(paths)


def test_hits_held_back_never_stall_prefetching(cluster, dataset):
    """A consumer slower than the network: each batch is prefetched by the time it is read,
    so every read is a cache hit. Prefetched files wait to be claimed, so these hits are
    reported at once (the window must move on): the whole epoch but its first files is
    prefetched, each file fetched once."""
    paths = epoch_order(sorted(dataset), 1)
    batch = 8
    with cluster.client(prefetch_items=16) as client:
        entries = {p: client.stat(p) for p in paths}
        client.set_hints(paths, (), entries)
        slots = client._async().items.prefetcher._slots
        for start in range(0, len(paths), batch):
            LOOP.run(asyncio.sleep(0))  # what was reported is handled (late hits stay late)
            deadline = time.monotonic() + 10
            while any(not s.task.done() for s in list(slots.values())):  # the "slow" consumer
                assert time.monotonic() < deadline
                time.sleep(0.002)
            chunk = [entries[p] for p in paths[start:start + batch]]
            assert client.read_entries(chunk) == [dataset[p] for p in paths[start:start + batch]]
        client.settle()
        stats = client.stats()
    assert stats["bytes_fetched"] == sum(len(dataset[p]) for p in paths)
    assert stats["prefetch_issued"] >= len(paths) - batch and stats["prefetch_late"] == 0
    assert stats["prefetch_used"] == stats["prefetch_issued"]


def test_flush_puts_what_was_read_on_the_disk_tier_for_other_processes(cluster, dataset,
                                                                       tmp_path):
    paths = sorted(dataset)[:10]
    disk = str(tmp_path / "cache")
    with cluster.client(disk_cache_dir=disk) as writer, \
            cluster.client(disk_cache_dir=disk) as other:
        assert writer.read_many(paths) == [dataset[p] for p in paths]
        writer.flush()  # no write may still be queued behind the reads
        assert other.read_many(paths) == [dataset[p] for p in paths]
        stats = other.stats()
    assert stats["bytes_fetched"] == 0 and stats["cache_hits_disk"] == len(paths)


def test_hints_on_a_small_directory_know_its_entries_and_its_cached_files(cluster, tmp_path):
    """Too few files to list their directory: each is looked up, and files already on the
    disk tier are not fetched again."""
    files = {f"/engine/small/{i}.bin": os.urandom(5000 + i) for i in range(5)}
    for path, data in files.items():
        with cluster.client() as client:
            client.write(path, data)
    disk = str(tmp_path / "cache")
    paths = sorted(files)
    with cluster.client(disk_cache_dir=disk) as first:
        first.set_hints(paths)
        assert [first.read(p) for p in paths] == [files[p] for p in paths]
        first.flush()
        assert first.stats()["prefetch_used"] >= len(paths) - 1
    with cluster.client(disk_cache_dir=disk) as second:
        second.set_hints(paths)
        assert [second.read(p) for p in paths] == [files[p] for p in paths]
        stats = second.stats()
    assert stats["bytes_fetched"] == 0 and stats["cache_hits_disk"] == len(paths)


def test_future_eviction_fetches_less_than_lru_with_half_the_data_cached(cluster, dataset):
    fetched = {}
    for policy in ("lru", "future"):
        with cluster.client(eviction=policy, memory_cache_bytes=sum(SIZES) // 2) as client:
            run_epochs(client, dataset, 3)
            fetched[policy] = client.stats()["bytes_fetched"]
            assert client._async().items.cache.memory.used_bytes <= sum(SIZES) // 2
    assert fetched["future"] <= 0.8 * fetched["lru"], fetched


def test_sequential_traversal_without_hints_is_detected(cluster, dataset):
    paths = sorted(dataset)
    with cluster.client(memory_cache_bytes=0) as client:
        client.expect_order(paths)
        for path in paths:
            assert client.read(path) == dataset[path]
        stats = client.stats()
    assert stats["prefetch_issued"] >= len(paths) - 10
    assert stats["prefetch_used"] >= 0.95 * stats["prefetch_issued"]
    assert stats.get("pattern_sequential", 0) >= 1


def test_random_traversal_without_hints_prefetches_nothing_much(cluster, dataset):
    paths = sorted(dataset)
    with cluster.client(memory_cache_bytes=0) as client:
        client.expect_order(paths)
        for path in epoch_order(paths, 7):
            assert client.read(path) == dataset[path]
        stats = client.stats()
    assert stats["prefetch_issued"] <= 0.05 * len(paths)
    assert stats["bytes_fetched"] <= 1.05 * sum(SIZES)


@pytest.mark.parametrize("read_size", [256 * 1024, 4 * 1024 * 1024 + 3])
def test_sequential_file_reads_get_readahead(cluster, read_size):
    """Reads larger than the readahead window end short at its edge: still sequential."""
    data = os.urandom(12 * 1024 * 1024 + 5)
    with cluster.client(memory_cache_bytes=0) as client:
        client.write("/engine/seq.bin", data)
        with client.open("/engine/seq.bin") as f:
            pieces = []
            while piece := f.read(read_size):
                pieces.append(piece)
        assert b"".join(pieces) == data
        stats = client.stats()
    assert stats.get("readahead_bytes", 0) >= len(data) // 2
    assert stats["pattern_sequential"] == 1 and stats["pattern_random"] == 0
    assert stats.get("readahead_wasted_bytes", 0) <= 0.05 * stats["bytes_fetched"]


def test_random_file_reads_waste_at_most_five_percent(cluster):
    data = os.urandom(16 * 1024 * 1024)
    rng = random.Random(5)
    with cluster.client(memory_cache_bytes=0) as client:
        client.write("/engine/random.bin", data)
        before = client.stats()["bytes_fetched"]
        with client.open("/engine/random.bin") as f:
            for _ in range(200):
                offset = rng.randrange(len(data) - 5000)
                f.seek(offset)
                assert f.read(4000) == data[offset:offset + 4000]
        stats = client.stats()
    fetched = stats["bytes_fetched"] - before
    assert stats.get("readahead_wasted_bytes", 0) <= 0.05 * fetched
    assert stats["pattern_random"] >= 1


def test_read_ranges_coalesces_near_ranges(cluster):
    data = os.urandom(900_000)
    ranges = [(i * 150, 100) for i in range(200)] + [(800_000, 10), (0, 0), (899_990, 50)]
    with cluster.client(memory_cache_bytes=0) as client:
        client.write("/engine/ranges.bin", data)
        before = client.stats()["volume_requests"]
        got = client.read_ranges("/engine/ranges.bin", ranges)
        requests = client.stats()["volume_requests"] - before
    assert got == [data[o:o + n] for o, n in ranges]
    assert requests == 3  # [0, 30 KB), [800 KB, +10), the tail


def test_threads_reading_one_file_share_one_fetch(cluster):
    data = os.urandom(6 * 1024 * 1024)
    with cluster.client() as client:
        client.write("/engine/shared.bin", data)
        chunks = len(client.stat("/engine/shared.bin").chunks)
        before = client.stats()["volume_requests"]
        results = []
        def read() -> None:
            results.append(client.read("/engine/shared.bin"))

        threads = [threading.Thread(target=read) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [data] * 6
        assert client.stats()["volume_requests"] - before == chunks


def test_peak_memory_stays_within_the_budgets(cluster):
    memory, prefetch = 16 * 1024 * 1024, 8 * 1024 * 1024
    paths = [f"/engine/rss/{i:03d}.bin" for i in range(100)]  # 50 MB: twice the budgets
    with cluster.client() as client:
        for path in paths:
            client.write(path, os.urandom(500_000))
    script = textwrap.dedent(f"""
        import random, seaweed_data as sd
        paths = {paths!r}
        def rss():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))
        config = sd.Config(master={cluster.master_url!r}, memory_cache_bytes={memory},
                           prefetch_bytes={prefetch})
        with sd.Client({cluster.filer_url!r}, config) as client:
            client.read(paths[0])
            base, peak = rss(), 0
            for epoch in range(3):
                order = list(paths)
                random.Random(epoch).shuffle(order)
                client.set_hints(order)
                for path in order:
                    client.read(path)
                    peak = max(peak, rss())
        print(peak - base)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    growth = int(out.split()[-1])
    assert growth <= 1.2 * (memory + prefetch), growth
