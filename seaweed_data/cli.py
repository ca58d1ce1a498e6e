"""The ``seaweed-data`` command: ``demo`` and ``server`` (more subcommands to come)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence

from .config import parse_size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="seaweed-data",
        description="Feed training jobs straight from SeaweedFS.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="start a local SeaweedFS, write a dataset, compare read throughput")
    demo.add_argument("--files", type=int, default=2000, help="small files (default 2000)")
    demo.add_argument("--file-size", type=parse_size, default="16KiB",
                      help="bytes per small file (default 16KiB)")
    demo.add_argument("--big-size", type=parse_size, default="64MiB",
                      help="size of the large file (default 64MiB)")
    demo.add_argument("--rounds", type=int, default=3, help="rounds per case (median)")
    demo.add_argument("--filer", help="use this filer instead of starting a LocalCluster")

    server = commands.add_parser(
        "server", help="run a LocalCluster in the foreground until Ctrl-C")
    server.add_argument("--volumes", type=int, default=1)
    server.add_argument("--replication", default="000")
    server.add_argument("--s3", action="store_true", help="also start the S3 gateway")

    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    return _server(args)


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, run_demo

    options = DemoOptions(files=args.files, file_bytes=args.file_size,
                          big_bytes=args.big_size, rounds=args.rounds)
    table = run_demo(options, filer=args.filer, say=lambda text: print(text, flush=True))
    print()
    print(table)
    return 0


def _server(args: argparse.Namespace) -> int:
    from .core.cluster import LocalCluster

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalCluster(volumes=args.volumes, replication=args.replication,
                      s3=args.s3) as cluster:
        print(f"filer   {cluster.filer_url}")
        print(f"master  {cluster.master_url}")
        if cluster.s3_url:
            print(f"s3      {cluster.s3_url}  (access key {cluster.s3_access_key})")
        print("Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
        print("stopping ...", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
