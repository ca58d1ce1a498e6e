"""Load: 20,000 small files, 4 DataLoader workers, 3 epochs; then 50 DataLoader iterators
created and destroyed. Every sample exactly once and exact; memory stays within the
configured budgets (+20%); fds, threads and child processes return to their baseline.

Sized to run in the default test command in about a minute on two cores: files of 1 KB
(20 MB in all, written once per session through the async core, 32 at a time), and of the
50 iterator cycles 44 fork their workers and 6 spawn them (a spawned worker imports torch:
seconds each; six cycles exercise that path as well as fifty would).

Memory is VmRSS from ``/proc/<pid>/status`` (psutil is not a dependency). A process's budget
is ``memory_cache_bytes + prefetch_bytes``; its RSS may grow by that plus 20%, plus
``RSS_ALLOWANCE``, measured from each worker's first batch on (before it, a worker builds its
client, loop thread and connections: several MiB whatever the budget, and a worker sampled
before or after that would differ by as much). The memory tier alone is held to its
budget plus 20% in a clean process, per eviction policy.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from functools import partial
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler

import seaweed_data as sd
from seaweed_data.core.aclient import gather_bounded
from seaweed_data.core.cluster import LocalCluster
from seaweed_data.torch import PrefetchSampler, SeaweedImageFolder

pytestmark = pytest.mark.timeout(300)

FILES = 20_000
CLASSES = 20
FILE_BYTES = 1024
MiB = 1 << 20
MEMORY_CACHE = 4 * MiB  # each worker reads 5 MiB an epoch: full in the first
PREFETCH_BYTES = 2 * MiB
BUDGET = MEMORY_CACHE + PREFETCH_BYTES
RSS_ALLOWANCE = 8 * MiB
"""Measured: ~3 MiB with ``memory_cache_bytes=0`` (connection buffers, allocator arenas), plus
the memory tier's bookkeeping that ``memory_cache_bytes`` does not count: ~0.5 KiB per cached
entry with ``eviction="future"``, i.e. +50% for 1 KiB files (see
test_memory_tier_rss_of_1kib_entries_is_within_its_budget_plus_20_percent). With a 4 MiB tier a
worker grows ~10.5 MiB over the three epochs; the bound is 15.2 MiB."""
FORK_CYCLES, SPAWN_CYCLES = 44, 6


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def collate_digests(batch: list[tuple[bytes, int]]) -> list[bytes]:
    """Workers send 16-byte digests, not the samples: the main process holds next to
    nothing, so its RSS says what the engine keeps."""
    return [digest(data) for data, _ in batch]


def raw(data: bytes) -> bytes:
    return data


def rss(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_fds() -> tuple[str, ...]:
    """What the open fds point to (a count would hide one file closed and another opened)."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the fd of the listing itself, closed by now
            continue
    return tuple(sorted(targets))


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def child_pids() -> set[int]:
    me = str(os.getpid())
    children = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        children.add(int(pid))
            except OSError:
                pass
    return children


def resources() -> tuple[tuple[str, ...], int, int, set[int]]:
    gc.collect()
    return open_fds(), threading.active_count(), os_threads(), child_pids()


def settle(baseline: Any, timeout: float = 15.0) -> Any:
    """The resources once they are back at ``baseline`` (workers take a moment to be
    reaped, the loop thread to stop); what they are at the deadline otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        now = resources()
        if now == baseline or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def sample_workers(loader: DataLoader[Any], start: dict[int, int], peak: dict[int, int]) -> None:
    """Record each worker's RSS (first sample and peak). No reference to a worker's Process
    may outlive this: it holds two pipe fds until it is collected."""
    for pid in [proc.pid for proc in loader._iterator._workers]:  # type: ignore[union-attr]
        now = rss(pid)
        start.setdefault(pid, now)
        peak[pid] = max(peak.get(pid, 0), now)


@pytest.fixture(scope="module")
def many_files(cluster: LocalCluster) -> tuple[str, Counter[bytes]]:
    """20,000 files of 1 KB in 20 class folders; the digests of their contents."""
    root = f"/t/rel-load-{uuid.uuid4().hex[:8]}"
    rng = random.Random(root)
    expected: Counter[bytes] = Counter()
    with cluster.client() as client:
        core = client._async()
        writes = []
        for i in range(FILES):
            data = rng.randbytes(FILE_BYTES)
            expected[digest(data)] += 1
            writes.append(partial(core.write, f"{root}/c{i % CLASSES:02d}/{i:05d}.jpg", data))
        client._run(gather_bounded(writes, 32))
    return root, expected


@pytest.fixture(scope="module")
def small_folder(cluster: LocalCluster) -> tuple[str, Counter[bytes]]:
    root = f"/t/rel-cycles-{uuid.uuid4().hex[:8]}"
    rng = random.Random(root)
    expected: Counter[bytes] = Counter()
    with cluster.client() as client:
        for i in range(256):
            data = rng.randbytes(FILE_BYTES)
            expected[digest(data)] += 1
            client.write(f"{root}/c{i % 4}/{i:03d}.jpg", data)
    return root, expected


def warm_up(cluster: LocalCluster, root: str, *kinds: str) -> None:
    """What a process starts once and keeps, before a baseline is taken: tqdm's monitor
    thread (the folder listing creates a bar, disabled or not; a disabled bar never stops the
    monitor), multiprocessing's resource tracker (the first ``spawn``), the loop thread's
    first start. Resources are compared after this."""
    ds = SeaweedImageFolder(f"{cluster.filer_url}{root}", loader=raw,
                            config=sd.Config(master=cluster.master_url))
    try:
        for kind in kinds:
            next(iter(DataLoader(ds, batch_size=8, num_workers=1, multiprocessing_context=kind,
                                 collate_fn=collate_digests)))
    finally:
        ds.close()


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
def test_three_epochs_of_20000_files_with_four_workers(cluster: LocalCluster,
                                                       many_files: Any,
                                                       small_folder: Any) -> None:
    root, expected = many_files
    warm_up(cluster, small_folder[0], "fork")
    config = sd.Config(master=cluster.master_url, memory_cache_bytes=MEMORY_CACHE,
                       prefetch_bytes=PREFETCH_BYTES)
    baseline = resources()
    ds = SeaweedImageFolder(f"{cluster.filer_url}{root}", loader=raw, config=config,
                            prefetch=16)
    assert len(ds) == FILES
    sampler = PrefetchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(3)), ds)
    loader = DataLoader(ds, batch_size=128, sampler=sampler, num_workers=4,
                        collate_fn=collate_digests, persistent_workers=True, timeout=120)
    main_start = rss()
    worker_start: dict[int, int] = {}
    worker_peak: dict[int, int] = {}
    main_peak = main_start
    try:
        for epoch in range(3):
            sampler.set_epoch(epoch)
            seen: Counter[bytes] = Counter()
            for n, batch in enumerate(loader):
                seen.update(batch)
                if n == 4 or (n % 10 == 0 and (epoch or n > 4)):  # each worker gave a batch
                    sample_workers(loader, worker_start, worker_peak)
                    main_peak = max(main_peak, rss())
            assert seen == expected, f"epoch {epoch}: samples lost, duplicated or wrong"
        stats = ds.stats()
    finally:
        del loader
        ds.close()
    assert stats["bytes_fetched"] >= FILES * FILE_BYTES
    assert len(worker_start) == 4  # persistent: the same four workers all along
    growth = {pid: worker_peak[pid] - worker_start[pid] for pid in worker_start}
    bound = 1.2 * BUDGET + RSS_ALLOWANCE
    assert max(growth.values()) <= bound, {p: g / MiB for p, g in growth.items()}
    assert main_peak - main_start <= bound, (main_peak - main_start) / MiB
    after = settle(baseline)
    assert after == baseline, f"fds, threads, OS threads, children: {after} != {baseline}"


def test_fifty_dataloader_iterators_created_and_destroyed_leave_nothing(
        cluster: LocalCluster, small_folder: Any) -> None:
    """Each cycle starts workers, reads part of an epoch (every fourth cycle all of it, which
    must be exact) and drops the iterator mid-epoch. The main process's RSS may not grow
    from the fifth cycle on by more than 20% of its budget."""
    root, expected = small_folder
    warm_up(cluster, root, "fork", "spawn")
    baseline = resources()
    config = sd.Config(master=cluster.master_url, memory_cache_bytes=MEMORY_CACHE,
                       prefetch_bytes=PREFETCH_BYTES)
    ds = SeaweedImageFolder(f"{cluster.filer_url}{root}", loader=raw, config=config)
    kinds = ["spawn"] * SPAWN_CYCLES + ["fork"] * FORK_CYCLES
    random.Random(0).shuffle(kinds)
    warm_rss = 0
    try:
        for cycle, kind in enumerate(kinds):
            if cycle == 4:
                warm_rss = rss()
            loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=2,
                                multiprocessing_context=kind, collate_fn=collate_digests,
                                timeout=120)
            batches = iter(loader)
            if cycle % 4 == 0:
                assert Counter(d for batch in batches for d in batch) == expected
            else:
                for _ in range(3):
                    next(batches)
            del batches, loader  # workers shut down mid-epoch
        grown = rss() - warm_rss
    finally:
        ds.close()
    after = settle(baseline)
    assert after == baseline, f"fds, threads, OS threads, children: {after} != {baseline}"
    assert grown <= 0.2 * BUDGET, f"RSS grew {grown / MiB:.1f} MiB over {len(kinds) - 4} cycles"


TIER_RSS = """
import os, sys
from seaweed_data.core.cache.keys import BlockKey
from seaweed_data.core.cache.memory import MemoryTier
from seaweed_data.core.cache.policy import make_policy
from seaweed_data.core.cache.tiered import ENTRY_OVERHEAD_BYTES

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

policy, capacity, size = sys.argv[1], 8 << 20, 1024
paths = [f"/t/load/c{i % 20:02d}/{i:05d}.jpg" for i in range(3 * capacity // size)]
tier = MemoryTier(capacity, make_policy(policy), entry_overhead=ENTRY_OVERHEAD_BYTES)
tier.set_future(paths + paths)
before = rss()
for path in paths:  # three times the capacity: full, then evicting
    tier.on_demand(path)
    tier.put(BlockKey(path, "0123456789abcdef01234567", 0, size), os.urandom(size))
assert tier.used_bytes <= capacity
print((rss() - before) / capacity)
"""


@pytest.mark.parametrize("eviction", ["lru", "future"])
def test_memory_tier_rss_of_1kib_entries_is_within_its_budget_plus_20_percent(
        eviction: str) -> None:
    """A clean process fills an 8 MiB tier three times over with 1 KiB entries; its RSS may
    grow by the budget plus 20% (Python objects and malloc included)."""
    out = subprocess.run([sys.executable, "-c", TIER_RSS, eviction], capture_output=True,
                         text=True, timeout=120, check=True)
    ratio = float(out.stdout)
    assert ratio <= 1.2, f"RSS grew {ratio:.2f}x memory_cache_bytes"
