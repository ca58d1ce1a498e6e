"""What a fresh DataLoader worker spends reading its share of a warm epoch, without DataLoader.

Issue #4's warm epoch with ``persistent_workers=False`` (DataLoader's default) starts two new
worker processes, each reading its 5,000 files of the 10,000 from the node's disk tier. This
benchmark isolates that read path from DataLoader's own costs (forking, pickling, pipes),
which are the same for every dataset. It fills a disk tier with ``--files`` JPEG-sized files
through ``SeaweedImageFolder`` (one cold epoch), then times, side by side in freshly forked
processes (interleaved rounds, medians), half of the files in a seeded shuffled order:

- ``client``: what a worker in its first epoch does: a new ``Client``, ``read_entries``
  batch by batch (all disk hits), the rest of its share told as hints in the background
  after the first batch that missed the cache (none does here);
- ``disk tier floor``: the same reads with nothing but the disk tier's parts: the cache keys,
  one index query and one verified ``pread`` per file (what any design on this index pays);
- ``local files``: ``open(path, 'rb').read()`` of the same files on local disk.

Reports milliseconds per share and, for ``client``, the CPU of the reading thread and of the
loop thread. Run: ``python benchmarks/worker_reads.py [--files 10000] [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagefolder_bench as bench

import seaweed_data as sd
from seaweed_data.core.cache.disk import DiskTier
from seaweed_data.core.cache.disk_layout import entry_key
from seaweed_data.core.cache.disk_segments import read_entry
from seaweed_data.core.items import whole_file_key
from seaweed_data.core.loop import LOOP
from seaweed_data.torch import PrefetchSampler, SeaweedImageFolder

Share = list[int]


def client_reads(ds: SeaweedImageFolder, share: Share) -> tuple[int, float]:
    client = sd.Client(ds.filer, ds.config)
    entries = ds.entries
    batches = [share[i:i + bench.BATCH] for i in range(0, len(share), bench.BATCH)]
    told = False
    count = 0
    for n, batch in enumerate(batches):
        misses = client.counters.get("cache_misses")
        count += len(client.read_entries([entries[i] for i in batch]))
        if not told and client.counters.get("cache_misses") > misses:  # as the dataset does
            told = True
            client.set_hints([entries[i].path for b in batches[n + 1:] for i in b], [],
                             ds._entries_by_path(), prefetch_next=False, background=True)
    assert client.stats()["cache_hits_disk"] == len(share)
    assert LOOP._thread is not None
    return count, time.clock_gettime(time.pthread_getcpuclockid(LOOP._thread.ident))


def floor_reads(ds: SeaweedImageFolder, share: Share) -> tuple[int, float]:
    assert ds.config.disk_cache_dir is not None
    tier = DiskTier(ds.config.disk_cache_dir, ds.config.disk_cache_bytes)
    tier.has("")  # connected
    count = 0
    for start in range(0, len(share), bench.BATCH):
        keys = [entry_key(whole_file_key(ds.entries[i]).digest)
                for i in share[start:start + bench.BATCH]]
        found = tier._index.locate_many(keys, time.time())
        for key in keys:
            where = found[key]
            fd = tier._readers.get(where.segment, tier._layout)
            count += len(read_entry(fd, where.offset, where.length, key)) > 0
    return count, 0.0


def local_reads(paths: list[str], share: Share) -> tuple[int, float]:
    count = 0
    for i in share:
        with open(paths[i], "rb") as f:
            count += len(f.read()) > 0
    return count, 0.0


def in_child(read: Callable[[], tuple[int, float]]) -> tuple[float, float, float, float]:
    """``read()`` in a forked process: (wall, process CPU, reading thread CPU, loop CPU)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        wall, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
        count, loop = read()
        assert count > 0
        out = (time.perf_counter() - wall, time.process_time() - cpu,
               time.thread_time() - thread, loop)
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as pipe:
        wall, cpu, thread, loop = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return wall, cpu, thread, loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="worker-reads-") as tmpdir, \
            sd.LocalCluster() as cluster:
        tmp = Path(tmpdir)
        local_root = tmp / "local" / bench.PREFIX
        client = cluster.client()
        bench.populate(client, local_root, args.files)
        client.close()
        runner = bench.Bench(cluster, args.files, local_root, tmp)
        ds = runner.folder(bench.raw)
        loader = bench.loader_for(ds, PrefetchSampler(bench.sampler_for(ds), ds))
        bench.epoch(loader, args.files)  # cold: fills the disk tier
        del loader
        local = [path for path, _ in runner.local_samples]
        share = list(range(args.files))
        random.Random(5).shuffle(share)
        share = share[:args.files // 2]
        cases: dict[str, Callable[[], tuple[int, float]]] = {
            "client": lambda: client_reads(ds, share),
            "disk tier floor": lambda: floor_reads(ds, share),
            "local files": lambda: local_reads(local, share),
        }
        times: dict[str, list[Any]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, read in cases.items():
                times[name].append(in_child(read))
        ds.close()
    print(f"{len(share)} of {args.files} files (~13 KB) per share, medians of {args.rounds} "
          "interleaved rounds, each in a freshly forked process\n")
    print("| case | ms per share | CPU ms | reading thread ms | loop thread ms | vs local |")
    print("|---|---:|---:|---:|---:|---:|")
    base = statistics.median(t[0] for t in times["local files"])
    for name, runs in times.items():
        wall, cpu, thread, loop = (statistics.median(t[i] for t in runs) for i in range(4))
        print(f"| {name} | {wall * 1e3:.1f} | {cpu * 1e3:.1f} | {thread * 1e3:.1f} | "
              f"{loop * 1e3:.1f} | {base / wall:.2f}x |")


if __name__ == "__main__":
    main()
