"""TFRecord shards through tf.data, side by side on one local SeaweedFS (issue #5).

8 shards (``--shards``) of ~32 MB (``--shard-mb``) holding records of 1-10 KB (uniform random
sizes and random bytes, seeded), written once both to SeaweedFS (``/bench/tfrecord/``) and to
a local directory. Every case iterates all records with the same consumer: by default
(``--consumer graph``) ``for batch in ds.batch(1024).map(count)``, where ``count`` sums records
and bytes in the graph (what the source alone delivers); ``--consumer python`` loops over the
records one at a time in Python (``for r in ds: n += len(r.numpy())``), the rate a training
step written in Python sees:

- (a) ``tf.data.TFRecordDataset`` on the local files (in the page cache: the local-disk limit);
- (b) naive download: ``requests.get(url).content`` through the filer per shard, written to a
  local temporary file, then ``tf.data.TFRecordDataset`` on those files; the time includes the
  downloads (the issue's baseline: it measured this at 0.22x of local files);
- (b2) a careful download: the same, streamed through one ``requests.Session`` in 1 MiB
  pieces (about twice as fast here), for reference;
- (c) ``seaweed_data.tf.TFRecordDataset`` on the SeaweedFS locations: a new dataset (new
  clients, empty caches) every round, so every round is cold: the first shard streams, the
  engine fetches the next ones whole (``prefetch=2``) while records are read;
- (c2) the dataset of (c) iterated a second time, as a next epoch would: its memory tier
  (256 MiB by default) holds the shards, so no byte crosses the network; what is left is
  the cost of the hand-off into TensorFlow;
- reference: the engine alone, ``Client.read`` of every shard in order after ``set_hints``
  (cold, nothing parsed): the share of (c) spent fetching.

Besides wall time, each case's CPU time is reported: this process (every thread) and the
SeaweedFS servers (from ``/proc``), since on a small shared machine they compete for cores.

Rounds are interleaved (every case once per round) after one untimed warm-up pass of (a),
(b) and (b2); medians are reported. Writes JSON and Markdown to ``benchmarks/results/tfrecord.*``
(``tfrecord_python.*`` for the Python consumer).
Run: ``python benchmarks/tfrecord_bench.py [--rounds 3] [--shards 8] [--shard-mb 32]
[--consumer graph|python]``.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import tensorflow as tf

import seaweed_data as sd
from seaweed_data.core.records import write_records
from seaweed_data.tf import TFRecordDataset

RESULTS = Path(__file__).resolve().parent / "results"
REMOTE_DIR = "/bench/tfrecord"
SEED = 5
MIN_RECORD, MAX_RECORD = 1000, 10_000
BATCH = 1024
CASES = ("a: tf.data.TFRecordDataset, local files",
         "b: download each shard (requests.get(url).content), then tf.data.TFRecordDataset",
         "b2: download each shard streamed (requests.Session, 1 MiB pieces), then tf.data",
         "c: seaweed_data.tf.TFRecordDataset (cold)",
         "c2: the same dataset iterated again (its memory tier holds the shards)",
         "reference: Client.read of each shard, hinted, cold, no records")
LOCAL, NAIVE, STREAMED, OURS, AGAIN, ENGINE = CASES


# -- data ----------------------------------------------------------------------------------------

def make_shard(index: int, target_bytes: int) -> tuple[bytes, int, int]:
    """One TFRecord shard of about ``target_bytes``: (file bytes, records, record bytes)."""
    rng = random.Random(SEED * 1_000_003 + index)
    records: list[bytes] = []
    size = 0
    while size < target_bytes:
        record = rng.randbytes(rng.randint(MIN_RECORD, MAX_RECORD))
        records.append(record)
        size += len(record) + 16
    out = io.BytesIO()
    write_records(out, records)
    return out.getvalue(), len(records), sum(len(r) for r in records)


def populate(client: sd.Client, local_dir: Path, shards: int,
             shard_mb: int) -> tuple[list[str], list[str], int, int]:
    """Write the shards locally and to SeaweedFS: (local paths, remote paths, records, bytes)."""
    local, remote, records, payload = [], [], 0, 0
    for i in range(shards):
        data, count, nbytes = make_shard(i, shard_mb * 1_000_000)
        name = f"train-{i:05d}-of-{shards:05d}.tfrecord"
        (local_dir / name).write_bytes(data)
        client.write(f"{REMOTE_DIR}/{name}", data)
        local.append(str(local_dir / name))
        remote.append(f"{REMOTE_DIR}/{name}")
        records, payload = records + count, payload + nbytes
    return local, remote, records, payload


# -- the consumer and the cases ------------------------------------------------------------------

def _count(batch: Any) -> tuple[Any, Any]:
    return tf.size(batch, out_type=tf.int64), tf.reduce_sum(tf.strings.length(batch,
                                                                              "BYTE"))


CONSUMERS = {
    "graph": f"`ds.batch({BATCH})` counting records and bytes in the graph (the source's limit)",
    "python": "a Python loop over the records, `for r in ds: n += len(r.numpy())` (eager, one "
              "record at a time, as a training step written in Python sees them)",
}
consumer = "graph"


def consume(dataset: Any) -> tuple[int, int]:
    """Iterate every record with the chosen consumer; (records, record bytes)."""
    records = nbytes = 0
    if consumer == "python":
        for record in dataset:
            records += 1
            nbytes += len(record.numpy())
        return records, nbytes
    for count, size in dataset.batch(BATCH).map(_count):
        records += int(count)
        nbytes += int(size)
    return records, nbytes


def process_cpu() -> float:
    """CPU seconds of this process (every thread) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def servers_cpu(cluster: sd.LocalCluster) -> float:
    """CPU seconds of the SeaweedFS servers so far (from /proc; 0 where unavailable)."""
    total = 0.0
    for pid in cluster.pids.values():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class Bench:
    def __init__(self, cluster: sd.LocalCluster, local: list[str], remote: list[str],
                 expected: tuple[int, int], tmp: Path) -> None:
        self.cluster, self.local, self.remote, self.expected = cluster, local, remote, expected
        self.tmp = tmp
        self.times: dict[str, list[float]] = {case: [] for case in CASES}
        self.cpu: dict[str, list[tuple[float, float]]] = {case: [] for case in CASES}
        self.stats: list[dict[str, int]] = []
        self.session = requests.Session()
        self.dataset: Any = None  # (c)'s, for (c2)

    def timed(self, case: str, run: Callable[[], tuple[int, int] | None]) -> None:
        gc.collect()
        cpu, servers = process_cpu(), servers_cpu(self.cluster)
        start = time.perf_counter()
        seen = run()
        self.times[case].append(time.perf_counter() - start)
        self.cpu[case].append((process_cpu() - cpu, servers_cpu(self.cluster) - servers))
        if seen is not None and seen != self.expected:
            raise RuntimeError(f"{case}: read {seen} (records, bytes), expected {self.expected}")

    def local_files(self) -> tuple[int, int]:
        return consume(tf.data.TFRecordDataset(self.local))

    def download(self) -> tuple[int, int]:
        """(b): each shard's whole body read at once, as naive code does."""
        def fetch(url: str, target: str) -> None:
            response = requests.get(url, timeout=300)
            response.raise_for_status()
            Path(target).write_bytes(response.content)
        return self._downloaded(fetch)

    def download_streamed(self) -> tuple[int, int]:
        """(b2): each shard streamed to its file in 1 MiB pieces over one session."""
        def fetch(url: str, target: str) -> None:
            with self.session.get(url, stream=True, timeout=300) as response:
                response.raise_for_status()
                with open(target, "wb") as f:
                    for piece in response.iter_content(1 << 20):
                        f.write(piece)
        return self._downloaded(fetch)

    def _downloaded(self, fetch: Callable[[str, str], None]) -> tuple[int, int]:
        with tempfile.TemporaryDirectory(dir=self.tmp) as target:
            paths = []
            for path in self.remote:
                local = os.path.join(target, os.path.basename(path))
                fetch(self.cluster.filer_url + path, local)
                paths.append(local)
            return consume(tf.data.TFRecordDataset(paths))

    def ours(self) -> tuple[int, int]:
        before = sd.stats()
        config = sd.Config(master=self.cluster.master_url)
        self.dataset = TFRecordDataset([self.cluster.filer_url + p for p in self.remote],
                                       config=config)
        seen = consume(self.dataset)
        after = sd.stats()
        self.stats.append({k: after[k] - before.get(k, 0) for k in after
                           if after[k] != before.get(k, 0)})
        return seen

    def ours_again(self) -> tuple[int, int]:
        """(c2): the dataset (c) made, iterated a second time (an epoch after the first)."""
        seen = consume(self.dataset)
        self.dataset = None
        return seen

    def engine_only(self) -> None:
        """The engine's share of (c): whole shards into memory, in order, nothing parsed."""
        with sd.Client(self.cluster.filer_url, sd.Config(master=self.cluster.master_url)) as c:
            c.set_hints(self.remote)
            for path in self.remote:
                c.read(path)

    def run_round(self, number: int, log: Callable[[str], None]) -> None:
        runs = (self.local_files, self.download, self.download_streamed, self.ours,
                self.ours_again, self.engine_only)
        for case, run in zip(CASES, runs, strict=True):
            self.timed(case, run)
            log(f"  round {number}: {case}: {self.times[case][-1]:.2f} s")


# -- report --------------------------------------------------------------------------------------

Target = tuple[str, float, float | None]


def report(bench: Bench, args: argparse.Namespace, file_bytes: int,
           setup_s: float) -> tuple[str, dict[str, Any]]:
    records, payload = bench.expected
    medians = {case: statistics.median(t) for case, t in bench.times.items()}
    cpu = {case: (statistics.median(c for c, _ in used), statistics.median(s for _, s in used))
           for case, used in bench.cpu.items()}
    local, naive, streamed, ours = (medians[c] for c in (LOCAL, NAIVE, STREAMED, OURS))
    targets: list[Target] = [("(c) vs (a) local files", local / ours, 0.6),
                             ("(c) vs (b) download then read", naive / ours, 2.5),
                             ("(c) vs (b2) streamed download then read", streamed / ours, None)]
    lines = [
        f"# TFRecord shards through tf.data ({args.shards} shards, {file_bytes / 1e6:,.0f} MB, "
        f"{records:,} records of {MIN_RECORD // 1000}-{MAX_RECORD // 1000} KB)",
        "",
        f"Consumer: {CONSUMERS[args.consumer]}; medians of "
        f"{args.rounds} interleaved rounds; SeaweedFS (`LocalCluster`) on the same machine "
        f"({os.cpu_count()} cores); (c) is cold every round (new dataset, clients and caches);"
        f" python {sys.version.split()[0]}, tensorflow {tf.__version__}.",
        "",
        *case_rows(bench, medians, cpu, file_bytes),
        "", "CPU s: client = this process (every thread: tf.data, the Python generator, "
        "the client's event loop); servers = the SeaweedFS processes (master, volume, "
        "filer). The reference row is the engine alone: the shards fetched whole into "
        "memory in order (what (c) must do before parsing a record).",
        "", *target_rows(targets),
        "", f"Setup (generate, write to SeaweedFS and local disk): {setup_s:.1f} s.", "",
        f"Command: `python benchmarks/tfrecord_bench.py --rounds {args.rounds} "
        f"--shards {args.shards} --shard-mb {args.shard_mb} --consumer {args.consumer}`"]
    data = {
        "shards": args.shards, "shard_mb": args.shard_mb, "rounds": args.rounds,
        "records": records, "record_bytes": payload, "file_bytes": file_bytes,
        "batch": BATCH, "consumer": args.consumer, "seed": SEED, "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__, "python": sys.version.split()[0],
        "times_s": bench.times, "median_s": medians,
        "cpu_s_client_servers": bench.cpu, "median_cpu_s_client_servers": cpu,
        "records_per_s": {case: records / s for case, s in medians.items() if case != ENGINE},
        "mb_per_s": {case: (file_bytes if case == ENGINE else payload) / s / 1e6
                     for case, s in medians.items()},
        "ratios": {label: value for label, value, _ in targets},
        "targets": {label: target for label, _, target in targets if target is not None},
        "seaweed_stats_per_round": bench.stats, "setup_s": setup_s,
    }
    return "\n".join(lines) + "\n", data


def case_rows(bench: Bench, medians: dict[str, float],
              cpu: dict[str, tuple[float, float]], file_bytes: int) -> list[str]:
    """The table of cases: rates, times, CPU and each against the three baselines."""
    records, payload = bench.expected
    bases = [medians[LOCAL], medians[NAIVE], medians[STREAMED]]
    rows = ["| case | records/s | MB/s | s (min-max) | CPU s: client / servers | vs (a) local "
            "| vs (b) download | vs (b2) streamed download |",
            "|---|---|---|---|---|---|---|---|"]
    for case, times in bench.times.items():
        seconds = medians[case]
        timing = (f"{seconds:.2f} ({min(times):.2f}-{max(times):.2f}) | "
                  f"{cpu[case][0]:.2f} / {cpu[case][1]:.2f}")
        if case == ENGINE:
            rows.append(f"| {case} | - | {file_bytes / seconds / 1e6:,.0f} (file bytes) | "
                        f"{timing} | - | - | - |")
            continue
        versus = " | ".join(f"{base / seconds:.2f}x" for base in bases)
        rows.append(f"| {case} | {records / seconds:,.0f} | {payload / seconds / 1e6:,.0f} | "
                    f"{timing} | {versus} |")
    return rows


def target_rows(targets: list[Target]) -> list[str]:
    """The ratios issue #5 sets targets for (and one it does not, ``None``)."""
    rows = ["| ratio | measured | target | met |", "|---|---|---|---|"]
    for label, value, target in targets:
        wanted = "-" if target is None else f">= {target}x"
        met = "-" if target is None else "yes" if value >= target else "NO"
        rows.append(f"| {label} | {value:.2f}x | {wanted} | {met} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-mb", type=int, default=32)
    parser.add_argument("--consumer", choices=sorted(CONSUMERS), default="graph",
                        help="how the records are consumed (see the module docstring)")
    parser.add_argument("--no-write", action="store_true", help="print only, write no results")
    args = parser.parse_args()
    global consumer
    consumer = args.consumer

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tfrecord-bench-") as tmpdir, \
            sd.LocalCluster() as cluster:
        tmp = Path(tmpdir)
        (tmp / "local").mkdir()
        t0 = time.perf_counter()
        with cluster.client() as client:
            local, remote, records, payload = populate(client, tmp / "local", args.shards,
                                                       args.shard_mb)
        setup_s = time.perf_counter() - t0
        file_bytes = sum(os.path.getsize(p) for p in local)
        log(f"wrote {args.shards} shards ({file_bytes / 1e6:.0f} MB, {records} records) "
            f"in {setup_s:.1f} s")
        bench = Bench(cluster, local, remote, (records, payload), tmp)
        bench.local_files()  # untimed warm-up: page cache, server caches, tf.data tracing
        bench.download()
        bench.download_streamed()
        for number in range(1, args.rounds + 1):
            bench.run_round(number, log)
        markdown, data = report(bench, args, file_bytes, setup_s)
    data["total_runtime_s"] = time.perf_counter() - started
    print(markdown)
    log(f"total runtime {data['total_runtime_s']:.0f} s")
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        name = "tfrecord" if args.consumer == "graph" else f"tfrecord_{args.consumer}"
        (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(markdown)


if __name__ == "__main__":
    main()
