"""Client throughput, side by side on one local SeaweedFS (issue #2's figures).

(a) 5,000 files of 16 KB: ``Client.read_many`` against one ``requests.Session`` GET per file
    through the filer (the naive loader).
(b) one 256 MB file: ``Client.read`` against ``curl`` through the filer. The like-for-like
    baseline delivers the bytes into this process, as ``read`` does: curl writes a tmpfs file
    that is then read. For reference also curl into a tmpfs file alone, and into /dev/null
    (which delivers the bytes nowhere).

Our client is created once and reused across rounds, as a training job would; the naive loop
opens its ``requests.Session`` per round (sessions are cheap; connections are kept within it).

Rounds are interleaved (a, b, a, b, ...) and medians reported. Writes JSON and Markdown to
``benchmarks/results/``. Run: ``python benchmarks/client_bench.py [--rounds 5] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

import seaweed_data as sd

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def populate(client: sd.Client, files: int, file_bytes: int, big_bytes: int) -> list[str]:
    payload = os.urandom(file_bytes)
    paths = [f"/bench/small/{i:06d}.bin" for i in range(files)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: client.write(p, payload), paths))
    client.write("/bench/big.bin", os.urandom(big_bytes))
    return paths


def naive_loop(filer: str, paths: list[str]) -> None:
    with requests.Session() as session:
        for path in paths:
            response = session.get(filer + path, timeout=60)
            response.raise_for_status()
            assert len(response.content) > 0


def ours_many(client: sd.Client, paths: list[str]) -> None:
    assert all(client.read_many(paths))


def ours_big(client: sd.Client, size: int) -> None:
    assert len(client.read("/bench/big.bin")) == size


def curl_to_tmpfs(url: str, size: int, read_back: bool) -> None:
    with tempfile.NamedTemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
        subprocess.run(["curl", "-sf", "-o", f.name, url], check=True)
        if read_back:
            assert len(Path(f.name).read_bytes()) == size


def curl_devnull(url: str) -> None:
    subprocess.run(["curl", "-sf", "-o", os.devnull, url], check=True)


def measure(cluster: sd.LocalCluster, args: argparse.Namespace) -> dict[str, list[float]]:
    filer = cluster.filer_url
    with cluster.client() as client:
        paths = populate(client, args.files, args.file_bytes, args.big_bytes)
    big_url = f"{filer}/bench/big.bin"
    # No cache: every round must fetch from the servers, as the peers do.
    with cluster.client(memory_cache_bytes=0) as ours, \
            cluster.client(memory_cache_bytes=0, pipelining=False) as unpipelined:
        cases: dict[str, Callable[[], object]] = {
            "a: naive requests loop": lambda: naive_loop(filer, paths),
            "a: Client.read_many": lambda: ours_many(ours, paths),
            "a: Client.read_many, pipelining off": lambda: ours_many(unpipelined, paths),
            "b: curl -> tmpfs -> bytes": lambda: curl_to_tmpfs(big_url, args.big_bytes, True),
            "b: curl -> tmpfs file": lambda: curl_to_tmpfs(big_url, args.big_bytes, False),
            "b: curl -> /dev/null": lambda: curl_devnull(big_url),
            "b: Client.read": lambda: ours_big(ours, args.big_bytes),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for fn in cases.values():  # warm-up: page cache, connections, volume locations
            fn()
        for round_no in range(args.rounds):
            for name, fn in cases.items():
                times[name].append(timed(fn))
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
    return times


def report(times: dict[str, list[float]], args: argparse.Namespace) -> str:
    med = {name: statistics.median(t) for name, t in times.items()}
    small_mb = args.files * args.file_bytes / 1e6
    rows = [
        ("a: naive requests loop", f"{args.files / med['a: naive requests loop']:,.0f} files/s",
         "1.00x"),
        ("a: Client.read_many, pipelining off",
         f"{args.files / med['a: Client.read_many, pipelining off']:,.0f} files/s",
         f"{med['a: naive requests loop'] / med['a: Client.read_many, pipelining off']:.2f}x"),
        ("a: Client.read_many", f"{args.files / med['a: Client.read_many']:,.0f} files/s",
         f"{med['a: naive requests loop'] / med['a: Client.read_many']:.2f}x"),
    ]
    base = med["b: curl -> tmpfs -> bytes"]
    for name in ("b: curl -> tmpfs -> bytes", "b: curl -> tmpfs file", "b: curl -> /dev/null",
                 "b: Client.read"):
        rows.append((name, f"{args.big_bytes / med[name] / 1e6:,.0f} MB/s",
                     f"{base / med[name]:.2f}x"))
    lines = [f"{args.files} files x {args.file_bytes} B ({small_mb:.0f} MB) and one "
             f"{args.big_bytes / 1e6:.0f} MB file; median of {args.rounds} interleaved rounds",
             "", "| case | throughput | vs first row of its group |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--file-bytes", type=int, default=16 * 1024)
    parser.add_argument("--big-bytes", type=int, default=256 * 1024 * 1024)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.files, args.big_bytes = 3, 200, 8 * 1024 * 1024
    if not shutil.which("curl"):
        sys.exit("curl is needed for the comparison (apt-get install curl)")
    with sd.LocalCluster() as cluster:
        times = measure(cluster, args)
    table = report(times, args)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "client.json").write_text(json.dumps(
        {"args": vars(args), "seconds": times}, indent=2))
    (RESULTS / "client.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
