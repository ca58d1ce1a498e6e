"""What one small disk-cache entry costs to write and read, against the alternatives.

Why issue #4's cold epoch with the disk tier lagged the one without it: the disk tier used to
write one file per entry (``DiskTier.put`` 144 µs of CPU per 13 KB entry, ``get`` 12 µs, in
``results/disk_costs.md`` before the pack-file tier). Side by side, per 13 KB entry, medians of
``--rounds`` interleaved rounds of ``--entries`` entries each, in a fresh directory under
``--dir``:

- ``DiskTier.put`` / ``DiskTier.get`` (the real tier: pack files, a shared SQLite index,
  reservations, checksums bound to the key);
- a bare file per entry: create, write, close, rename out of a temp directory (the floor of the
  former file-per-entry tier);
- appending the entry to one pack file;
- appending it and recording its offset in a SQLite index (WAL, ``synchronous=OFF``), the
  floor of the pack-file tier.

Wall and CPU microseconds per entry (CPU includes the kernel's time for this process). File
creation costs depend on the filesystem's recent history (deletions on an ext4 mounted with
``discard`` slow it for a while), so compare rows of one run. Prints a Markdown table and writes
``benchmarks/results/disk_costs.json`` and ``.md``. Run: ``python benchmarks/disk_costs.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from seaweed_data.core.cache.disk import DiskTier
from seaweed_data.core.cache.tiered import WRITE_BURST

RESULTS = Path(__file__).resolve().parent / "results"
ENTRY_BYTES = 13_000
Case = Callable[[Path, int, bytes], None]


def tier_put(base: Path, n: int, data: bytes) -> None:
    tier = DiskTier(base / "tier", 1 << 34)
    for i in range(n):
        tier.put(f"k{i}", data)
    tier.close()


def tier_get(base: Path, n: int, data: bytes) -> None:
    tier = DiskTier(base / "tier", 1 << 34)  # reads what tier_put wrote this round
    for i in range(n):
        assert tier.get(f"k{i}") == data
    tier.close()


def tier_put_many(base: Path, n: int, data: bytes) -> None:
    """What the cache's write-behind thread does: bursts of WRITE_BURST entries."""
    tier = DiskTier(base / "many", 1 << 34)
    for start in range(0, n, WRITE_BURST):
        tier.put_many([(f"k{i}", data, None) for i in range(start, min(n, start + WRITE_BURST))])
    tier.close()


def file_per_entry(base: Path, n: int, data: bytes) -> None:
    (base / "tmp").mkdir()
    (base / "files").mkdir()
    for i in range(n):
        temp = base / "tmp" / f"{i}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.close(fd)
        os.replace(temp, base / "files" / str(i))


def pack_append(base: Path, n: int, data: bytes) -> None:
    fd = os.open(base / "pack", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for _ in range(n):
        os.write(fd, data)
    os.close(fd)


def pack_and_index(base: Path, n: int, data: bytes) -> None:
    db = sqlite3.connect(base / "index.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE e(k TEXT PRIMARY KEY, off INT, n INT) WITHOUT ROWID")
    fd = os.open(base / "pack", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for i in range(n):
        os.write(fd, data)
        db.execute("INSERT OR REPLACE INTO e VALUES(?,?,?)", (f"k{i}", i * len(data), len(data)))
    os.close(fd)
    db.close()


CASES: dict[str, Case] = {
    "DiskTier.put": tier_put,
    "DiskTier.get": tier_get,
    f"DiskTier.put_many, bursts of {WRITE_BURST}": tier_put_many,
    "file per entry: create, write, rename": file_per_entry,
    "append to one pack file": pack_append,
    "append + SQLite index row": pack_and_index,
}


def measure(args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    data = os.urandom(ENTRY_BYTES)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=args.dir) as root:
            for number, (name, case) in enumerate(CASES.items()):
                # the two DiskTier cases share one directory: get reads what put wrote
                base = Path(root) / ("tier" if name.startswith("DiskTier") else f"case{number}")
                base.mkdir(exist_ok=True)
                wall, cpu = time.perf_counter(), time.process_time()
                case(base, args.entries, data)
                times[name].append(((time.perf_counter() - wall) / args.entries * 1e6,
                                    (time.process_time() - cpu) / args.entries * 1e6))
    return times


def report(times: dict[str, list[tuple[float, float]]], args: argparse.Namespace) -> str:
    lines = [f"{args.entries} entries of {ENTRY_BYTES:,} bytes per round, medians of "
             f"{args.rounds} interleaved rounds, under {args.dir or tempfile.gettempdir()}", "",
             "| case | µs per entry (wall) | µs per entry (CPU) |", "|---|---:|---:|"]
    for name, samples in times.items():
        wall = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        lines.append(f"| {name} | {wall:,.1f} | {cpu:,.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="where to make the directories (default: system temp)")
    args = parser.parse_args()
    times = measure(args)
    table = report(times, args)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "disk_costs.json").write_text(json.dumps(times, indent=1))
    (RESULTS / "disk_costs.md").write_text(
        f"# Disk-cache entry costs\n\n{table}\n\nCommand: `python benchmarks/disk_costs.py`\n")


if __name__ == "__main__":
    main()
