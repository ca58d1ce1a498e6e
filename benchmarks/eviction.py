"""Eviction benchmark: ``lru`` and ``future`` on the real memory tier against offline Belady.

A seeded workload: ``--keys`` items of log-normal sizes (1 KB to 1 MB), read for ``--epochs``
epochs, each in a fresh seeded permutation, with the cache at 50% and 25% of the data's bytes.

- ``lru`` and ``future`` drive the real :class:`MemoryTier`. The values are zero-copy views of
  one preallocated buffer, so the run needs little memory. At each epoch start ``future`` is
  told that epoch's order plus the next one's (what a training loop with a seeded sampler
  knows), and every read calls ``on_demand``.
- ``belady`` is an independent offline computation over the whole trace, sharing no code with
  the policy: evict the entry whose next use is farthest, and do not admit an item that is never
  used again or whose next use is farther than that of everything cached.

Everything is deterministic. Prints a Markdown table and writes ``benchmarks/results/
eviction.json`` and ``eviction.md``. Run: ``python benchmarks/eviction.py [--seed 0]
[--keys 10000] [--epochs 3]``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seaweed_data.core.cache.keys import BlockKey
from seaweed_data.core.cache.memory import MemoryTier
from seaweed_data.core.cache.policy import make_policy

RESULTS = Path(__file__).resolve().parent / "results"
FRACTIONS = (0.5, 0.25)
Report = dict[str, Any]  # JSON-ready
MIN_SIZE, MAX_SIZE = 1 << 10, 1 << 20


@dataclass(frozen=True)
class Workload:
    """Item sizes and one read order (a permutation of item ids) per epoch."""

    sizes: list[int]
    orders: list[list[int]]

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)


@dataclass
class Tally:
    """What one policy did over the whole trace."""

    hits: int = 0
    misses: int = 0
    hit_bytes: int = 0
    fetched_bytes: int = 0

    def count(self, hit: bool, size: int) -> None:
        if hit:
            self.hits += 1
            self.hit_bytes += size
        else:
            self.misses += 1
            self.fetched_bytes += size

    def summary(self) -> dict[str, float]:
        reads = self.hits + self.misses
        read_bytes = self.hit_bytes + self.fetched_bytes
        return {**asdict(self), "hit_rate": self.hits / reads,
                "byte_hit_rate": self.hit_bytes / read_bytes}


def make_workload(seed: int, keys: int, epochs: int) -> Workload:
    """Seeded log-normal sizes (median 32 KB, clipped to 1 KB..1 MB) and per-epoch orders."""
    sizes = np.random.default_rng([seed, 0]).lognormal(np.log(32 << 10), 1.5, keys)
    clipped = np.clip(sizes, MIN_SIZE, MAX_SIZE).astype(np.int64)
    orders = [np.random.default_rng([seed, 1 + epoch]).permutation(keys).tolist()
              for epoch in range(epochs)]
    return Workload([int(s) for s in clipped], orders)


def run_tier(policy: str, workload: Workload, capacity: int) -> Tally:
    """Replay the workload through a real ``MemoryTier`` with the named policy."""
    buffer = memoryview(bytearray(MAX_SIZE))
    names = [f"/bench/{item:06d}.bin" for item in range(len(workload.sizes))]
    keys = [BlockKey(name, "v1", 0, size) for name, size in zip(names, workload.sizes,
                                                               strict=True)]
    tier = MemoryTier(capacity, make_policy(policy))
    tally = Tally()
    orders = workload.orders
    for epoch, order in enumerate(orders):
        # What a seeded sampler knows at an epoch start: this epoch and the next.
        known = order + (orders[epoch + 1] if epoch + 1 < len(orders) else [])
        tier.set_future([names[item] for item in known])
        for item in order:
            key = keys[item]
            hit = tier.get(key) is not None
            tier.on_demand(names[item])
            tally.count(hit, key.size)
            if not hit:
                tier.put(key, buffer[:key.size])
            assert tier.used_bytes <= capacity
    return tally


def next_uses(trace: list[int]) -> list[int]:
    """For each position, the position of the same item's next read (``len(trace)``: never)."""
    never = len(trace)
    following = [never] * len(trace)
    seen: dict[int, int] = {}
    for position in range(len(trace) - 1, -1, -1):
        following[position] = seen.get(trace[position], never)
        seen[trace[position]] = position
    return following


class OfflineBelady:
    """Belady's MIN with admission control, over a trace known in advance."""

    def __init__(self, sizes: list[int], capacity: int, never: int) -> None:
        self.sizes, self.capacity, self.never = sizes, capacity, never
        self.cached: dict[int, int] = {}  # item -> position of its next read
        self.farthest: list[tuple[int, int]] = []  # max-heap (-next read, item); stale skipped
        self.used = 0

    def read(self, item: int, upcoming: int) -> bool:
        """Read ``item`` (next read again at ``upcoming``); ``True`` on a hit."""
        if item in self.cached:
            self._file(item, upcoming)
            return True
        size = self.sizes[item]
        while self.used + size > self.capacity:
            if upcoming == self.never or upcoming > self._farthest_use():
                return False  # never read again, or everything cached is read sooner
            _, victim = heapq.heappop(self.farthest)
            self.used -= self.sizes[victim]
            del self.cached[victim]
        self.used += size
        self._file(item, upcoming)
        return False

    def _file(self, item: int, upcoming: int) -> None:
        self.cached[item] = upcoming
        heapq.heappush(self.farthest, (-upcoming, item))

    def _farthest_use(self) -> int:
        while self.cached.get(self.farthest[0][1]) != -self.farthest[0][0]:
            heapq.heappop(self.farthest)
        return -self.farthest[0][0]


def offline_belady(workload: Workload, capacity: int) -> Tally:
    """Replay the whole trace through :class:`OfflineBelady`."""
    trace = [item for order in workload.orders for item in order]
    cache = OfflineBelady(workload.sizes, capacity, never=len(trace))
    tally = Tally()
    for item, upcoming in zip(trace, next_uses(trace), strict=True):
        tally.count(cache.read(item, upcoming), workload.sizes[item])
    return tally


def run(seed: int = 0, keys: int = 10_000, epochs: int = 3,
        fractions: tuple[float, ...] = FRACTIONS) -> Report:
    """Every policy at every cache fraction; a JSON-ready report."""
    workload = make_workload(seed, keys, epochs)
    rows = []
    for fraction in fractions:
        capacity = int(workload.total_bytes * fraction)
        policies = {"lru": run_tier("lru", workload, capacity),
                    "future": run_tier("future", workload, capacity),
                    "belady": offline_belady(workload, capacity)}
        summaries = {name: tally.summary() for name, tally in policies.items()}
        rows.append({
            "fraction": fraction, "capacity_bytes": capacity, "policies": summaries,
            "future_over_belady_hits": policies["future"].hits / policies["belady"].hits,
            "future_over_lru_hit_rate": (summaries["future"]["hit_rate"]
                                         / summaries["lru"]["hit_rate"]),
        })
    return {"seed": seed, "keys": keys, "epochs": epochs, "reads": keys * epochs,
            "total_bytes": workload.total_bytes, "rows": rows}


def targets_met(report: Report) -> bool:
    """The issue's targets: future >= 98% of Belady's hits everywhere, >= 2.5x LRU at 50%."""
    return all(row["future_over_belady_hits"] >= 0.98
               and (row["fraction"] != 0.5 or row["future_over_lru_hit_rate"] >= 2.5)
               for row in report["rows"])


def markdown(report: Report) -> str:
    """The report as a Markdown table."""
    lines = [f"{report['keys']} keys ({_mb(report['total_bytes'])} MB), {report['epochs']} "
             f"epochs, seed {report['seed']}\n",
             "| cache | policy | hits | hit rate | byte hit rate | MB fetched "
             "| future / belady (hits) | future / lru (hit rate) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        for name, s in row["policies"].items():
            ratios = (f"{row['future_over_belady_hits']:.3f} | "
                      f"{row['future_over_lru_hit_rate']:.2f}x" if name == "future" else " | ")
            lines.append(f"| {row['fraction']:.0%} | {name} | {s['hits']} | {s['hit_rate']:.2%} "
                         f"| {s['byte_hit_rate']:.2%} | {_mb(s['fetched_bytes'])} | {ratios} |")
    lines.append(f"\nTargets (future >= 0.98 x belady, >= 2.5x lru at 50%): "
                 f"{'met' if targets_met(report) else 'NOT met'}")
    return "\n".join(lines) + "\n"


def _mb(value: int) -> str:
    return f"{value / 1e6:,.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report = run(args.seed, args.keys, args.epochs)
    table = markdown(report)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eviction.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "eviction.md").write_text(table)
    print(f"wrote {args.out}/eviction.json and eviction.md in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
