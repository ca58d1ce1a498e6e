"""The disk cache under stress, end to end: never a wrong byte, never a crash.

``tests/test_disk_cache.py`` checks the tier itself (format, permissions, budget, a writer
frozen halfway, ENOSPC, fork). Here the whole read path runs on top of it, against a real
cluster: entries damaged on disk, files rewritten on the filer while an old version sits in
the cache, a disk that fills up under a DataLoader, two processes evicting from one small
directory at once; and a real writer process killed with SIGKILL at random moments in the
middle of big entries.
"""

from __future__ import annotations

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
from torch.utils.data import DataLoader

import seaweed_data as sd
from seaweed_data.core.cache import disk, disk_ledger
from seaweed_data.core.cache.disk import DiskTier
from seaweed_data.core.cluster import LocalCluster
from seaweed_data.torch import SeaweedImageFolder

KB = 1024
MB = 1024 * KB


def entry_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("??/*") if p.is_file())


def dir_total(root: Path) -> int:
    temps = [p for p in (root / "tmp").iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in [*entry_files(root), *temps])


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


def _flip_payload(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))


def _flip_header(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[3] ^= 0x01
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 3)


def _empty(path: Path) -> None:
    os.truncate(path, 0)


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"trailing")


DAMAGES = [_flip_payload, _flip_header, _truncate, _empty, _garbage, _append]


def test_damaged_entries_are_refetched_never_served(cluster: LocalCluster,
                                                    files: dict[str, bytes],
                                                    tmp_path: Path) -> None:
    root = tmp_path / "cache"
    with caching_client(cluster, root) as client:
        assert client.read_many(list(files)) == list(files.values())
    entries = entry_files(root)
    assert len(entries) == len(files)
    for i, entry in enumerate(entries):  # every entry damaged, each kind several times
        DAMAGES[i % len(DAMAGES)](entry)
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
    assert DiskTier(root, 10 * MB).used_bytes() == dir_total(root)


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
            assert len(entry_files(root)) == n + 1  # old versions linger, never served


# -- a full disk ---------------------------------------------------------------------------------


def test_a_full_disk_degrades_the_disk_tier_not_the_job(
        cluster: LocalCluster, files: dict[str, bytes], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """ENOSPC after four entries, in this process and in the DataLoader workers it forks: every
    sample is still read, exactly; the entries written before stay readable."""
    root = tmp_path / "cache"
    real_write_all = disk._write_all
    written = [0]

    def fill_up(fd: int, parts: Any) -> None:
        if written[0] >= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        written[0] += 1
        real_write_all(fd, parts)

    monkeypatch.setattr(disk, "_write_all", fill_up)
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
    assert len(entry_files(root)) == 4 and not list((root / "tmp").iterdir())
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
    tier = DiskTier(root, 600 * KB)
    assert dir_total(root) == tier.used_bytes() <= 600 * KB


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
    """A real process writes 16 MB entries in a loop (evicting as it goes); it is killed with
    SIGKILL at a random moment while a temp file is growing, five times over. What is left is
    either whole or absent, the temp files of the dead are cleaned, the ledger adds up."""
    root = tmp_path / "cache"
    size = 16 * MB
    rng = random.Random(5)
    for round_no in range(5):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(size)])
        try:
            deadline = time.monotonic() + 60
            while not any(0 < n < size for n in temps(root).values()):
                assert time.monotonic() < deadline and writer.poll() is None
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.05))  # anywhere in the write, rename or ledger update
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        tier = DiskTier(root, 8 * size)
        for n in range(12):
            key = f"big-{n}"
            got = tier.get(key)
            assert got is None or got == payload(key, size), f"round {round_no}: torn {key}"
        assert tier.stats()["corrupt"] == 0  # renamed entries are always whole
        assert tier.put(f"after-{round_no}", b"x")  # a put sweeps the dead writer's temp file
        assert not temps(root)  # nor any empty one
        # A writer killed between two steps may leave the ledger high (documented: it costs
        # capacity until a recount), never low: the budget holds.
        assert dir_total(root) <= tier.used_bytes() <= 8 * size
        tier.close()
    tier = DiskTier(root, 8 * size)
    for n in range(9):  # it still fills up: a drift never blocks a write
        assert tier.put(f"refill-{n}", payload(f"refill-{n}", size))
        assert tier.get(f"refill-{n}") == payload(f"refill-{n}", size)
    assert dir_total(root) <= tier.used_bytes() <= 8 * size


def temps(root: Path) -> dict[Path, int]:
    """Temp files (entries being written) and their sizes."""
    tmp = root / "tmp"
    found = {}
    for p in tmp.iterdir() if tmp.is_dir() else []:
        try:
            found[p] = p.stat().st_size
        except FileNotFoundError:  # renamed into place meanwhile
            continue
    return found


def _killed_after_creating_its_temp_file(root: str, created: Any) -> None:
    """Reserve room for an entry, and hang right after the temp file is created."""
    real: Callable[[str, int], int] = getattr(disk_ledger, "open_private_file")  # noqa: B009

    def create_then_hang(path: str, flags: int) -> int:
        fd = real(path, flags)
        if path.endswith(".tmp"):
            created.set()
            time.sleep(60)
        return fd

    setattr(disk_ledger, "open_private_file", create_then_hang)  # noqa: B010
    DiskTier(root, 1 * MB).put("victim", bytes(500 * KB))


def test_a_writer_killed_right_after_creating_its_temp_file_leaves_the_ledger_high(
        tmp_path: Path) -> None:
    root = tmp_path / "cache"
    tier = DiskTier(root, 1 * MB)
    assert tier.put("a", bytes(100 * KB))
    ctx = multiprocessing.get_context("fork")
    created = ctx.Event()
    writer = ctx.Process(target=_killed_after_creating_its_temp_file, args=(str(root), created))
    writer.start()
    assert created.wait(30)
    assert writer.pid is not None
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    later = DiskTier(root, 1 * MB)
    assert later.put("b", bytes(10 * KB))  # sweeps the dead writer's temp file
    assert later.used_bytes() >= dir_total(root)
