"""The ``seaweed-data`` command: ``demo``, ``ingest``, ``server``, ``bench`` and ``stats``.

``seaweed-data COMMAND --help`` describes each. Long work shows tqdm progress bars (on stderr);
results go to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from .config import parse_size
from .errors import SeaweedDataError

if TYPE_CHECKING:
    from .core.cluster import LocalCluster

BENCH_RUNNER = Path(__file__).resolve().parent.parent / "benchmarks" / "run_all.py"
Command = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    parser = argparse.ArgumentParser(
        prog="seaweed-data",
        description="Feed PyTorch and TensorFlow training straight from SeaweedFS.",
        epilog="`seaweed-data COMMAND --help` describes each command.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers: dict[str, Command] = {
        "demo": _add_demo(commands), "ingest": _add_ingest(commands),
        "server": _add_server(commands), "bench": _add_bench(commands),
        "stats": _add_stats(commands)}
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.runner_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return handlers[args.command](args)
    except (SeaweedDataError, OSError) as exc:
        print(f"seaweed-data {args.command}: {exc}", file=sys.stderr)
        return 1


# -- demo --------------------------------------------------------------------------------------

def _add_demo(commands: Subparsers) -> Command:
    demo = commands.add_parser(
        "demo", help="train a small CNN from a local SeaweedFS and compare loaders",
        description="Start a local SeaweedFS, write a synthetic image dataset and TFRecord "
        "shards, train a small CNN through SeaweedImageFolder + PrefetchSampler, and compare "
        "reading with a naive filer loader and local disk. Prints a table, saves a PNG chart.")
    demo.add_argument("--images", type=int, default=3000,
                      help="images to generate; with --data, samples per epoch (default 3000)")
    demo.add_argument("--epochs", type=int, default=2, help="epochs per loader (default 2)")
    demo.add_argument("--image-size", type=int, default=64, help="pixels a side (default 64)")
    demo.add_argument("--batch-size", type=int, default=64)
    demo.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    demo.add_argument("--shards", type=int, default=4, help="TFRecord shards (default 4)")
    demo.add_argument("--chart", type=Path, help="where to save the PNG chart "
                      "(default: seaweed-data-demo.png in the temporary directory)")
    demo.add_argument("--filer", help="run on this filer instead of a local SeaweedFS "
                      "(data written under a fresh directory, removed after)")
    demo.add_argument("--data", help="train on your image folder (root/<class>/<image>) at "
                      "this location instead of generating one")
    return _demo


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, format_table, run_demo

    if min(args.images, args.epochs, args.image_size, args.batch_size, args.shards) < 1 \
            or args.workers < 0:
        print("seaweed-data demo: sizes must be >= 1 (--workers >= 0)", file=sys.stderr)
        return 2
    options = DemoOptions(images=args.images, epochs=args.epochs, image_size=args.image_size,
                          batch_size=args.batch_size, workers=args.workers, shards=args.shards)
    if args.chart is not None:
        options = DemoOptions(**{**options.__dict__, "chart": args.chart})
    report = run_demo(options, filer=args.filer, data=args.data,
                      say=lambda text: print(text, flush=True))
    print()
    print(format_table(report))
    if report.chart is not None:
        print(f"chart: {report.chart}")
    return 0


# -- ingest ------------------------------------------------------------------------------------

def _add_ingest(commands: Subparsers) -> Command:
    ingest = commands.add_parser(
        "ingest", help="upload a local folder (resumable), optionally packed into shards",
        description="Upload the folder SRC to DST on SeaweedFS, many files at once. Running "
        "it again uploads only what is missing (a file already there with the same size is "
        "skipped; one listing per directory). With --shards the files are packed into "
        "TFRecord or .pt shards plus a shards.json manifest (see seaweed_data.ingest).")
    ingest.add_argument("src", metavar="SRC", type=Path, help="local folder")
    ingest.add_argument("dst", metavar="DST", help="destination: seaweedfs://HOST:PORT/path, "
                        "a filer URL with a path, or a path on --filer / $SEAWEED_FILER")
    ingest.add_argument("--filer", help="filer URL for a bare DST path")
    ingest.add_argument("--shards", choices=("tfrecord", "pt"),
                        help="pack the files into shards of this format")
    ingest.add_argument("--shard-size", type=parse_size, default="64MB",
                        help="file bytes per shard (default 64MB)")
    ingest.add_argument("--workers", type=int, default=16, help="uploads at once (default 16)")
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    return _ingest


def _ingest(args: argparse.Namespace) -> int:
    from .config import Config
    from .core.client import Client
    from .core.location import normalize_filer, parse_location
    from .ingest import ingest

    location = parse_location(args.dst, normalize_filer(args.filer) if args.filer else None)
    with Client(location.filer, Config.from_env()) as client:
        result = ingest(client, args.src, location.path, shards=args.shards,
                        shard_bytes=args.shard_size, workers=args.workers,
                        progress=not args.quiet)
    print(f"{result.files:,} files in {args.src}: uploaded {result.uploaded:,} "
          f"({result.bytes_uploaded / 1e6:,.1f} MB), {result.skipped:,} already there; "
          f"{result.listings:,} directory listings; {result.seconds:.1f} s")
    if result.shards:
        print(f"{len(result.shards)} {args.shards} shards in {location.filer}{location.path} "
              "(manifest: shards.json)")
    return 0


# -- server ------------------------------------------------------------------------------------

def _add_server(commands: Subparsers) -> Command:
    server = commands.add_parser(
        "server", help="run a local SeaweedFS in the foreground until Ctrl-C",
        description="Start a LocalCluster (master, volume servers, filer, optionally the S3 "
        "gateway) on free 127.0.0.1 ports, print its URLs, and stop it at Ctrl-C or SIGTERM.")
    server.add_argument("--volumes", type=int, default=1, help="volume servers (default 1)")
    server.add_argument("--replication", default="000", help="e.g. 000, 010 (default 000)")
    server.add_argument("--s3", action="store_true", help="also start the S3 gateway")
    server.add_argument("--dir", type=Path, help="keep data and logs here (default: a "
                        "temporary directory, removed at exit)")
    return _server


def _server(args: argparse.Namespace) -> int:
    from .core.cluster import LocalCluster

    stop = threading.Event()
    # Ctrl-C and SIGTERM only set the event: no KeyboardInterrupt lands in the middle of
    # starting or stopping the cluster.
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _serve(LocalCluster(volumes=args.volumes, replication=args.replication,
                                   s3=args.s3, base_dir=args.dir), stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(cluster: LocalCluster, stop: threading.Event) -> int:
    with cluster:
        print(f"filer   {cluster.filer_url}")
        print(f"master  {cluster.master_url}")
        for i, url in enumerate(cluster.volume_urls):
            print(f"volume{i} {url}")
        if cluster.s3_url:
            print(f"s3      {cluster.s3_url}  (access key {cluster.s3_access_key})")
        print(f"export SEAWEED_FILER={cluster.filer_url}")
        print("Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
        print("stopping ...", flush=True)
    return 0


# -- bench -------------------------------------------------------------------------------------

def _add_bench(commands: Subparsers) -> Command:
    commands.add_parser(
        "bench", add_help=False, help="run the benchmark suite (benchmarks/run_all.py)",
        description="Every argument goes to benchmarks/run_all.py; "
        "`seaweed-data bench --help` shows its options (--quick, --only, ...).")
    return _bench


def _bench(args: argparse.Namespace) -> int:
    if not BENCH_RUNNER.is_file():
        print(f"seaweed-data bench: {BENCH_RUNNER} not found; the benchmarks live in the "
              "source tree (run from a checkout of seaweed_data)", file=sys.stderr)
        return 1
    command = [sys.executable, str(BENCH_RUNNER), "--prog", "seaweed-data bench",
               *args.runner_args]
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130


# -- stats -------------------------------------------------------------------------------------

def _add_stats(commands: Subparsers) -> Command:
    stats = commands.add_parser(
        "stats", help="print the counters of running training jobs",
        description="Read the metrics a running job publishes: the metrics directories of "
        "its datasets (DataLoader workers report there every second; found in the temporary "
        "directory, or --job) or a Prometheus endpoint it started (--prometheus).")
    stats.add_argument("--job", action="append", default=[], metavar="DIR",
                       help="a job's metrics directory (seaweed-data-job-*); repeatable")
    stats.add_argument("--prometheus", action="append", default=[], metavar="URL",
                       help="a job's /metrics endpoint, e.g. 127.0.0.1:9108; repeatable")
    stats.add_argument("--tmp", help="where to look for jobs (default: the temporary dir)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.add_argument("--watch", type=float, metavar="SECONDS",
                       help="print again every SECONDS until Ctrl-C")
    return _stats


def _stats(args: argparse.Namespace) -> int:
    from . import cli_stats

    while True:
        jobs = [cli_stats.read_job(path) for path in args.job]
        jobs += [cli_stats.scrape(url) for url in args.prometheus]
        if not args.job and not args.prometheus:
            jobs = [cli_stats.read_job(path) for path in cli_stats.find_jobs(args.tmp)]
        if args.json:
            print(cli_stats.as_json(jobs), flush=True)
        elif jobs:
            print("\n\n".join(cli_stats.format_job(job) for job in jobs), flush=True)
        else:
            print("no seaweed_data job found (a job appears while a SeaweedImageFolder or "
                  "ShardDataset runs with DataLoader workers; or give --prometheus URL)",
                  flush=True)
        if args.watch is None:
            return 0 if jobs else 1
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0
        print(flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
