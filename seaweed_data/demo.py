"""``seaweed-data demo``: a local SeaweedFS, a small dataset, and read throughput side by side.

It starts a :class:`LocalCluster`, writes a folder of small files (image-sized) and one large
file, then reads them three ways and prints a table:

- naive: one keep-alive HTTP GET per file through the filer, the way a ``__getitem__`` with
  ``requests.get`` does it;
- ``Client.read_many`` / ``Client.read``: metadata from the filer, bytes straight from the
  volume servers, many requests in flight;
- local disk: the same files read from a local directory (the limit to aim for).
"""

from __future__ import annotations

import http.client
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from .core.client import Client
from .core.location import quote_path


@dataclass(frozen=True)
class DemoOptions:
    files: int = 2000
    file_bytes: int = 16 * 1024
    big_bytes: int = 64 * 1024 * 1024
    rounds: int = 3


def write_dataset(client: Client, options: DemoOptions, local: Path) -> list[str]:
    """Class folders of small files plus one large file, on SeaweedFS and on local disk."""
    paths = [f"/demo/images/class{i % 10}/{i:06d}.jpg" for i in range(options.files)]
    rng = os.urandom(options.file_bytes + options.files)

    def put(i_path: tuple[int, str]) -> None:
        i, path = i_path
        data = rng[i:i + options.file_bytes]
        client.write(path, data)
        target = local / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    with ThreadPoolExecutor(16) as pool:
        list(tqdm(pool.map(put, enumerate(paths)), total=len(paths), unit="file",
                  desc="writing dataset"))
    big = os.urandom(options.big_bytes)
    client.write("/demo/big.bin", big)
    (local / "demo" / "big.bin").write_bytes(big)
    return paths


def naive_read(filer: str, paths: list[str]) -> int:
    """One GET per file through the filer on a keep-alive connection."""
    parts = urlsplit(filer)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)
    total = 0
    try:
        for path in paths:
            connection.request("GET", quote_path(path))
            response = connection.getresponse()
            total += len(response.read())
    finally:
        connection.close()
    return total


def local_read(local: Path, paths: list[str]) -> int:
    return sum(len((local / p.lstrip("/")).read_bytes()) for p in paths)


def median_seconds(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_demo(options: DemoOptions = DemoOptions(), filer: str | None = None,
             say: Callable[[str], None] = lambda _: None) -> str:
    """Run the demo (on ``filer`` if given, else on a fresh LocalCluster); return the table.

    ``say`` receives progress messages (the CLI prints them).
    """
    if filer is not None:
        with Client(filer) as client:
            return _measure(client, options)
    from .core.cluster import LocalCluster

    say("starting a local SeaweedFS (master, volume server, filer) ...")
    with LocalCluster() as cluster:
        say(f"filer at {cluster.filer_url}, master at {cluster.master_url}")
        with cluster.client() as client:
            return _measure(client, options)


def _measure(client: Client, options: DemoOptions) -> str:
    with tempfile.TemporaryDirectory(prefix="seaweed-data-demo-") as tmp:
        local = Path(tmp)
        paths = write_dataset(client, options, local)
        big_local = ["/demo/big.bin"]
        cases: list[tuple[str, str, Callable[[], object], float]] = [
            ("small files", "naive GET per file via filer", lambda: naive_read(client.filer, paths),
             options.files),
            ("small files", "Client.read_many", lambda: client.read_many(paths), options.files),
            ("small files", "local disk", lambda: local_read(local, paths), options.files),
            ("large file", "naive GET via filer", lambda: naive_read(client.filer, big_local),
             options.big_bytes / 1e6),
            ("large file", "Client.read", lambda: client.read("/demo/big.bin"),
             options.big_bytes / 1e6),
            ("large file", "local disk", lambda: local_read(local, big_local),
             options.big_bytes / 1e6),
        ]
        rows = []
        for group, name, fn, amount in tqdm(cases, desc="measuring", unit="case"):
            seconds = median_seconds(fn, options.rounds)
            unit = "files/s" if group == "small files" else "MB/s"
            rows.append((group, name, amount / seconds, unit))
        return _table(rows, client.stats(), options)


def _table(rows: list[tuple[str, str, float, str]], stats: dict[str, int],
           options: DemoOptions) -> str:
    naive = {group: rate for group, name, rate, _ in rows if name.startswith("naive")}
    lines = [f"{options.files} files of {options.file_bytes // 1024} KB and one "
             f"{options.big_bytes // 2**20} MB file, median of {options.rounds} rounds", "",
             f"{'workload':<12} {'reader':<30} {'throughput':>16} {'vs naive':>9}"]
    for group, name, rate, unit in rows:
        lines.append(f"{group:<12} {name:<30} {rate:>10,.0f} {unit:<6}"
                     f"{rate / naive[group]:>8.1f}x")
    lines += ["", "client counters: " + ", ".join(
        f"{k}={stats[k]:,}" for k in ("requests", "filer_requests", "volume_requests",
                                      "bytes_fetched", "retries"))]
    return "\n".join(lines)
