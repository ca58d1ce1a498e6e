"""The disk cache under stress, end to end: never a wrong byte, never a crash.

``tests/test_disk_cache.py`` checks the tier itself (format, permissions, budget, writers
killed at random moments, ENOSPC, fork). Here the whole read path runs on top of it, against a
real cluster: entries damaged in their pack files, files rewritten on the filer while an old
version sits in the cache, a disk that fills up under a DataLoader, two processes evicting from
one small directory at once; and a real writer process killed with SIGKILL in the middle of
big entries, or right after creating a segment.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from disk_files import Row, all_rows, connect, consistent_view, pack_files, pack_total
from torch.utils.data import DataLoader

import seaweed_data as sd
from seaweed_data.core.cache import disk, disk_room, disk_writer
from seaweed_data.core.cache.disk import DiskTier
from seaweed_data.core.cache.disk_format import HEADER_SIZE
from seaweed_data.core.cluster import LocalCluster
from seaweed_data.torch import SeaweedImageFolder

KB = 1024
MB = 1024 * KB
GB = 1024 * MB


def entry_count(root: Path) -> int:
    with contextlib.closing(connect(root)) as db:
        return int(db.execute("SELECT count(*) FROM entries").fetchone()[0])


def settled_total(root: Path, capacity: int, *, exact: bool = True) -> int:
    """The budget in use as a fresh process sees it (after it sealed dead writers' segments),
    checked against the pack files (which may only be smaller after a pack file was truncated
    behind the tier's back)."""
    used = DiskTier(root, capacity).used_bytes()
    on_disk = pack_total(root)
    assert (used == on_disk if exact else used >= on_disk) and used <= capacity
    return used


def disk_stats(client: sd.Client) -> dict[str, int]:
    tier = client._async().items.cache.disk
    assert tier is not None
    return tier.stats()


def caching_client(cluster: LocalCluster, root: Path, **options: Any) -> sd.Client:
    """A client whose only cache is the disk tier at ``root`` (so every hit is a disk hit)."""
    return cluster.client(disk_cache_dir=str(root), memory_cache_bytes=0, **options)


@pytest.fixture(scope="module")
def files(cluster: LocalCluster) -> dict[str, bytes]:
    top = f"/t/rel-disk-{uuid.uuid4().hex[:8]}"
    rng = random.Random(top)
    data = {f"{top}/c{i % 2}/{i:02d}.bin": rng.randbytes(rng.randrange(20 * KB, 200 * KB))
            for i in range(16)}
    with cluster.client() as client:
        for path, payload in data.items():
            client.write(path, payload)
    return data


# -- damaged entries ---------------------------------------------------------------------------


def _overwrite(row: Row, at: int, data: bytes) -> None:
    with open(row.path, "r+b") as f:
        f.seek(row.offset + at)
        f.write(data)


def _flip_payload(row: Row) -> None:
    with open(row.path, "rb") as f:
        f.seek(row.offset + row.length // 2)
        byte = f.read(1)[0]
    _overwrite(row, row.length // 2, bytes([byte ^ 0x40]))


def _flip_header(row: Row) -> None:
    _overwrite(row, 3, b"?")


def _zeros(row: Row) -> None:
    _overwrite(row, 0, bytes(row.length))


def _garbage(row: Row) -> None:
    _overwrite(row, 0, os.urandom(row.length))


def _shorter_row(row: Row) -> None:
    with contextlib.closing(connect(row.path.parent.parent)) as db:
        db.execute("UPDATE entries SET length = length - 8 WHERE segment = ? AND offset = ?",
                   (int(row.path.stem, 16), row.offset))


def _truncate(row: Row) -> None:  # (the last entry of its pack file)
    os.truncate(row.path, row.offset + row.length // 3)


DAMAGES = [_flip_payload, _flip_header, _zeros, _garbage, _shorter_row]


def test_damaged_entries_are_refetched_never_served(cluster: LocalCluster,
                                                    files: dict[str, bytes],
                                                    tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with caching_client(cluster, root) as client:
        assert client.read_many(list(files)) == list(files.values())
    rows = all_rows(root)
    assert len(rows) == len(files)
    *others, last = rows
    for i, row in enumerate(others):  # every entry damaged, each kind several times
        DAMAGES[i % len(DAMAGES)](row)
    _truncate(last)
    with caching_client(cluster, root) as client:
        for path, payload in files.items():
            assert client.read(path) == payload
        stats, tier = client.stats(), disk_stats(client)
    assert stats["cache_hits"] == 0 and stats["cache_misses"] >= len(files)
    assert tier["corrupt"] == len(files)
    with caching_client(cluster, root) as client:  # the refetched bytes were cached again
        for path, payload in files.items():
            assert client.read(path) == payload
        assert client.stats()["cache_hits_disk"] == len(files)
        assert client.stats()["bytes_fetched"] == 0
    settled_total(root, 10 * GB, exact=False)


# -- older versions of a file --------------------------------------------------------------------


def test_a_rewritten_file_is_read_in_its_new_version_never_the_stale_one(
        cluster: LocalCluster, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    path = f"/t/rel-disk-versions-{uuid.uuid4().hex[:8]}/f.bin"
    versions = [os.urandom(100 * KB), os.urandom(100 * KB), os.urandom(70 * KB)]
    with cluster.client() as writer, \
            cluster.client(disk_cache_dir=str(root), metadata_ttl=0) as live:
        for n, version in enumerate(versions):
            writer.write(path, version)  # same length once, then another length
            with caching_client(cluster, root) as fresh:  # only the disk cache: all versions
                assert fresh.read(path) == version
            assert live.read(path) == version  # memory and disk hold older versions
            assert live.read(path, 1000, 5000) == version[1000:6000]
            with live.open(path) as f:
                assert f.read() == version
            assert entry_count(root) == n + 1  # old versions linger, never served


# -- a full disk ---------------------------------------------------------------------------------


def test_a_full_disk_degrades_the_disk_tier_not_the_job(
        cluster: LocalCluster, files: dict[str, bytes], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """ENOSPC after four entries, in this process and in the DataLoader workers it forks: every
    sample is still read, exactly; the entries written before stay readable."""
    root = tmp_path / "cache"
    real_write_all = disk_writer.write_all
    written = [0]

    def fill_up(fd: int, parts: Any, offset: int) -> None:
        room = 4 - written[0]  # entries (a header and a payload each; one write may hold many)
        real_write_all(fd, parts[:2 * room], offset)
        written[0] += min(room, len(parts) // 2)
        if len(parts) > 2 * room:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk_writer, "write_all", fill_up)
    top = next(iter(files)).rsplit("/", 2)[0]
    config = sd.Config(master=cluster.master_url, disk_cache_dir=str(root),
                       memory_cache_bytes=0)
    with caplog.at_level(logging.WARNING, logger=disk.__name__):
        with caching_client(cluster, root) as client:
            assert client.read_many(list(files)) == list(files.values())
            client.flush()  # the disk writes happen behind the reads
            assert not client._async().items.cache.disk.enabled  # type: ignore[union-attr]
        assert len([r for r in caplog.records if "No space left" in r.getMessage()]) == 1
        ds = SeaweedImageFolder(f"{cluster.filer_url}{top}", loader=bytes, config=config,
                                is_valid_file=lambda p: True)
        try:
            loader = DataLoader(ds, batch_size=4, num_workers=2,
                                collate_fn=lambda b: [d for d, _ in b])
            for _ in range(2):
                got = [data for batch in loader for data in batch]
                assert sorted(got) == sorted(files.values())
        finally:
            ds.close()
    assert entry_count(root) == 4
    with caching_client(cluster, root) as client:
        assert client.read_many(list(files)) == list(files.values())
        assert client.stats()["cache_hits_disk"] == 4


# -- two processes evicting from one small directory at once -----------------------------------


def _evicting_reader(filer: str, master: str, root: str, expected: dict[str, str], seed: int,
                     go: Any, results: Any) -> None:
    config = sd.Config(master=master, disk_cache_dir=root, disk_cache_bytes=600 * KB,
                       memory_cache_bytes=0)
    rng = random.Random(seed)
    wrong = 0
    with sd.Client(filer, config) as client:
        go.wait()
        for _ in range(4):
            order = list(expected)
            rng.shuffle(order)
            for path in order:
                if hashlib.sha256(client.read(path)).hexdigest() != expected[path]:
                    wrong += 1
            client.flush()  # this pass's writes are on the disk (behind the reads until now)
        tier = client._async().items.cache.disk
        stats = tier.stats() if tier is not None else {}
        results.put((wrong, client.stats()["cache_hits_disk"], stats.get("evictions", 0),
                     stats.get("corrupt", 0), stats.get("errors", 0)))


@pytest.mark.parametrize("method", ["fork"])
def test_two_processes_evicting_at_once_read_exact_bytes(cluster: LocalCluster,
                                                         files: dict[str, bytes],
                                                         tmp_path: Path, method: str) -> None:
    """The files (~1.7 MB) do not fit the 600 KB budget: both processes evict all the time,
    each other's entries too, while the other reads them."""
    root = tmp_path / "cache"
    expected = {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    ctx: Any = multiprocessing.get_context(method)
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_evicting_reader,
                         args=(cluster.filer_url, cluster.master_url, str(root), expected,
                               seed, go, results)) for seed in (1, 2)]
    for proc in procs:
        proc.start()
    go.set()
    reports = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert [r[0] for r in reports] == [0, 0], "a process read a wrong byte"
    assert sum(r[1] for r in reports) > 0 and sum(r[2] for r in reports) > 0  # hits, evictions
    assert [r[3] for r in reports] == [0, 0]  # no torn entry was ever seen
    settled_total(root, 600 * KB)


# -- a writer killed with SIGKILL in the middle of big entries ----------------------------------


WRITER = """
import sys
from seaweed_data.core.cache.disk import DiskTier

root, size = sys.argv[1], int(sys.argv[2])
tier = DiskTier(root, 8 * size)
for n in range(10**6):
    key = f"big-{n % 12}"
    tier.put(key, (key.encode() * (size // len(key) + 1))[:size])
"""


def payload(key: str, size: int) -> bytes:
    return (key.encode() * (size // len(key) + 1))[:size]


def test_writers_killed_mid_entry_never_leave_a_served_torn_entry(tmp_path: Path) -> None:
    """A real process appends 16 MB entries in a loop (evicting as it goes); it is killed with
    SIGKILL at a random moment while its pack file grows, five times over. Every entry read
    afterwards is whole; the dead writer's segment is sealed; the budget holds."""
    root = tmp_path / "cache"
    size = 16 * MB
    rng = random.Random(5)
    for round_no in range(5):
        before = pack_total(root)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(size)])
        try:
            deadline = time.monotonic() + 60
            while pack_total(root) == before:  # until it appends
                assert time.monotonic() < deadline and writer.poll() is None
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.3))  # anywhere in an append, reservation or eviction
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        with consistent_view(root) as view:
            assert view.on_disk <= view.allocated <= 8 * size
        tier = DiskTier(root, 8 * size)
        for n in range(12):
            key = f"big-{n}"
            got = tier.get(key)
            assert got is None or got == payload(key, size), f"round {round_no}: torn {key}"
        assert tier.stats()["corrupt"] == 0  # a torn tail is never filed
        assert tier.put(f"after-{round_no}", b"x")
        tier.close()
        settled_total(root, 8 * size)
    tier = DiskTier(root, 8 * size)
    for n in range(9):  # it still fills up: a dead writer's room is never lost
        assert tier.put(f"refill-{n}", payload(f"refill-{n}", size))
        assert tier.get(f"refill-{n}") == payload(f"refill-{n}", size)
    tier.close()
    settled_total(root, 8 * size)


def _killed_after_creating_its_segment(root: str, created: Any) -> None:
    """Make room for an entry, and hang right after the new segment's file is created (inside
    the index transaction that records it)."""
    real: Callable[[str], int] = getattr(disk_room, "create_segment")  # noqa: B009

    def create_then_hang(path: str) -> int:
        fd = real(path)
        created.set()
        time.sleep(60)
        return fd

    setattr(disk_room, "create_segment", create_then_hang)  # noqa: B010
    DiskTier(root, 1 * MB).put("victim", bytes(500 * KB))


def test_a_writer_killed_inside_its_reservation_leaves_nothing_counted(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    tier = DiskTier(root, 1 * MB)
    assert tier.put("a", bytes(100 * KB))
    tier.close()
    ctx = multiprocessing.get_context("fork")
    created = ctx.Event()
    writer = ctx.Process(target=_killed_after_creating_its_segment, args=(str(root), created))
    writer.start()
    assert created.wait(30)
    assert len(pack_files(root)) == 2  # its segment file exists, its row was never committed
    assert writer.pid is not None
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    later = DiskTier(root, 1 * MB)
    assert later.get("a") == bytes(100 * KB) and later.get("victim") is None
    assert len(pack_files(root)) == 1  # the first use deleted the file without a row
    assert later.put("b", bytes(10 * KB))
    later.close()
    assert settled_total(root, 1 * MB) == 2 * HEADER_SIZE + 110 * KB
