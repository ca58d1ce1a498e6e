"""The engine against a real SeaweedFS: prefetch precision, cache reuse, eviction policies.

One LocalCluster, one dataset of small files (seeded sizes), and three measurements, all
counters (deterministic), not timings:

1. one hinted epoch: ``prefetch_used / prefetch_issued`` and bytes fetched vs the data;
2. a second epoch with a cache that holds the data: bytes fetched again;
3. three shuffled epochs (seeded sampler: each epoch's order and the next one's are known)
   with the memory cache at 50% and 25% of the data: bytes fetched with ``lru`` vs
   ``future`` eviction.

Run: ``python benchmarks/engine_bench.py [--files 2000]``; writes
``benchmarks/results/engine.json`` and ``engine.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import seaweed_data as sd

RESULTS = Path(__file__).resolve().parent / "results"


def make_dataset(cluster: sd.LocalCluster, files: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    sizes = {f"/engine-bench/{i:06d}.bin": int(rng.lognormvariate(9.6, 0.6)) + 1000
             for i in range(files)}
    with cluster.client() as client, ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: client.write(item[0], os.urandom(item[1])), sizes.items()))
    return sizes


def order(paths: list[str], epoch: int, seed: int) -> list[str]:
    shuffled = list(paths)
    random.Random(seed * 1000 + epoch).shuffle(shuffled)
    return shuffled


def epochs(client: sd.Client, paths: list[str], count: int, seed: int,
           first: int = 0) -> dict[str, int]:
    for epoch in range(first, first + count):
        client.set_hints(order(paths, epoch, seed), order(paths, epoch + 1, seed))
        for path in order(paths, epoch, seed):
            client.read(path)
    return client.stats()


def measure(cluster: sd.LocalCluster, sizes: dict[str, int], seed: int) -> dict[str, object]:
    paths, total = sorted(sizes), sum(sizes.values())
    out: dict[str, object] = {"files": len(paths), "data_bytes": total}
    with cluster.client(memory_cache_bytes=2 * total) as client:
        one = epochs(client, paths, 1, seed)
        two = epochs(client, paths, 1, seed, first=1)
    out["precision"] = one["prefetch_used"] / max(1, one["prefetch_issued"])
    out["epoch1_bytes_fetched"] = one["bytes_fetched"]
    out["epoch2_bytes_fetched"] = two["bytes_fetched"] - one["bytes_fetched"]
    for fraction in (0.5, 0.25):
        for policy in ("lru", "future"):
            with cluster.client(memory_cache_bytes=int(total * fraction),
                                eviction=policy) as client:
                stats = epochs(client, paths, 3, seed)
            out[f"{policy}@{fraction:.0%}"] = {
                "bytes_fetched": stats["bytes_fetched"],
                "hit_rate": stats["cache_hits"] / (3 * len(paths))}
    return out


def table(result: dict[str, object]) -> str:
    total = int(result["data_bytes"])  # type: ignore[call-overload]
    lines = [f"{result['files']} files, {total / 1e6:.1f} MB, servers on loopback", "",
             "| measure | value |", "|---|---|",
             f"| prefetch_used / prefetch_issued, hinted epoch | {result['precision']:.4f} |",
             "| bytes fetched, epoch 1 / data | "
             f"{int(result['epoch1_bytes_fetched']) / total:.3f} |",  # type: ignore[call-overload]
             f"| bytes fetched, epoch 2 (cache holds the data) / data | "
             f"{int(result['epoch2_bytes_fetched']) / total:.4f} |"]  # type: ignore[call-overload]
    for fraction in ("50%", "25%"):
        lru, future = result[f"lru@{fraction}"], result[f"future@{fraction}"]
        assert isinstance(lru, dict) and isinstance(future, dict)
        saved = 1 - future["bytes_fetched"] / lru["bytes_fetched"]
        lines.append(f"| 3 epochs, cache {fraction}: bytes fetched lru / future / saved | "
                     f"{lru['bytes_fetched'] / total:.2f}x / "
                     f"{future['bytes_fetched'] / total:.2f}x / {saved:.0%} |")
        lines.append(f"| 3 epochs, cache {fraction}: hit rate lru / future | "
                     f"{lru['hit_rate']:.1%} / {future['hit_rate']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with sd.LocalCluster() as cluster:
        sizes = make_dataset(cluster, args.files, args.seed)
        result = measure(cluster, sizes, args.seed)
    text = table(result)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "engine.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
