"""Checkpoint save/load, side by side on one local SeaweedFS (issue #4's checkpoint figure).

One checkpoint: a state dict of float32 tensors, 512 MiB serialized (``--megabytes``).

load: ``seaweed_data.torch.load`` against the naive
      ``torch.load(io.BytesIO(requests.get(filer_url).content))``, both of the same file (the
      one ``save`` wrote, 8 MiB chunks); for reference also ``load`` of a file the filer chunked
      itself (written by ``requests.put``).
save: ``seaweed_data.torch.save`` (serialization included) against
      ``requests.put(filer_url, data=buffer)`` of the already serialized bytes; for reference
      the upload alone (``core.upload.write_file`` of the same bytes) and how soon
      ``save(background=True)`` returns (the upload then goes on behind training).

The cluster is a ``LocalCluster`` with default filer settings; volumes may hold 1 GB each so
that the rounds fit. Our client is made once and reused, as a training job would. Rounds are
interleaved (every case once per round) after one warm-up pass; medians are reported. Writes
JSON and Markdown to ``benchmarks/results/``.
Run: ``python benchmarks/checkpoint_bench.py [--rounds 3] [--megabytes 512] [--quick]``.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests
import torch

import seaweed_data as sd
from seaweed_data.core.upload import write_file
from seaweed_data.torch import load, save

RESULTS = Path(__file__).resolve().parent / "results"
MiB = 1 << 20
TENSOR_BYTES = 8 * MiB
TIMEOUT = 300


def make_state_dict(megabytes: int) -> dict[str, torch.Tensor]:
    """Float tensors of 8 MiB each (the last one smaller) adding up to ``megabytes`` MiB."""
    generator = torch.Generator().manual_seed(0)
    remaining, state, i = megabytes * MiB, {}, 0
    while remaining > 0:
        size = min(TENSOR_BYTES, remaining)
        state[f"layers.{i}.weight"] = torch.randn(size // 4, generator=generator)
        remaining -= size
        i += 1
    return state


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def check_same(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())


class BackgroundSave:
    """``save(background=True)`` then ``wait()``; remembers how soon ``save`` returned."""

    def __init__(self, client: sd.Client, state: dict[str, torch.Tensor]) -> None:
        self.client, self.state = client, state
        self.returned_after: list[float] = []

    def __call__(self) -> None:
        start = time.perf_counter()
        handle = save(self.state, "/bench/background.pt", client=self.client, background=True)
        self.returned_after.append(time.perf_counter() - start)
        handle.wait()


def cases(cluster: sd.LocalCluster, client: sd.Client, state: dict[str, torch.Tensor],
          raw: bytes, background: BackgroundSave) -> dict[str, Callable[[], object]]:
    filer = cluster.filer_url

    def naive_load(path: str) -> object:
        response = requests.get(filer + path, timeout=TIMEOUT)
        response.raise_for_status()
        return torch.load(io.BytesIO(response.content))

    def naive_save() -> None:
        requests.put(filer + "/bench/put.pt", data=raw, timeout=TIMEOUT).raise_for_status()

    return {
        "load: requests.get + torch.load": lambda: naive_load("/bench/ours.pt"),
        "load: seaweed_data.torch.load": lambda: load("/bench/ours.pt", client=client),
        "load: seaweed_data.torch.load, filer-chunked file":
            lambda: load("/bench/put.pt", client=client),
        "save: requests.put (bytes ready)": naive_save,
        "save: seaweed_data.torch.save": lambda: save(state, "/bench/ours.pt", client=client),
        "save: upload only (write_file)": lambda: write_file(client, "/bench/upload.pt", raw),
        "save: background=True, until wait() returns": background,
    }


def measure(args: argparse.Namespace) -> tuple[dict[str, list[float]], list[float], int]:
    state = make_state_dict(args.megabytes)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    raw = buffer.getvalue()
    del buffer
    with sd.LocalCluster(volume_size_limit_mb=1024) as cluster:
        config = sd.Config(master=cluster.master_url, filer_grpc_port=cluster.filer_grpc_port,
                           memory_cache_bytes=0)  # every load fetches, as the peers do
        with sd.Client(cluster.filer_url, config) as client:
            background = BackgroundSave(client, state)
            todo = cases(cluster, client, state, raw, background)
            for name, fn in todo.items():  # warm-up; also writes the files the loads read
                if name.startswith("save"):
                    fn()
            for name, fn in todo.items():
                if name.startswith("load"):
                    check_same(fn(), state)  # type: ignore[arg-type]
            background.returned_after.clear()
            times: dict[str, list[float]] = {name: [] for name in todo}
            for round_no in range(args.rounds):
                for name, fn in todo.items():
                    times[name].append(timed(fn))
                print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
    return times, background.returned_after, len(raw)


def report(times: dict[str, list[float]], size: int, args: argparse.Namespace,
           returns: list[float]) -> str:
    med = {name: statistics.median(t) for name, t in times.items()}
    lines = [f"One checkpoint of {size / 1e6:,.0f} MB ({args.megabytes} MiB of float32 "
             f"tensors); median of {args.rounds} interleaved rounds", "",
             "| case | seconds | MB/s | vs first row of its group |", "|---|---|---|---|"]
    for group in ("load", "save"):
        names = [n for n in med if n.startswith(group)]
        base = med[names[0]]
        for name in names:
            lines.append(f"| {name} | {med[name]:.2f} | {size / med[name] / 1e6:,.0f} | "
                         f"{base / med[name]:.2f}x |")
    lines.append(f"| save: background=True, until save() returns | "
                 f"{statistics.median(returns):.2f} | "
                 f"{size / statistics.median(returns) / 1e6:,.0f} | "
                 f"{med['save: requests.put (bytes ready)'] / statistics.median(returns):.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="64 MiB, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.megabytes = 64
    times, returns, size = measure(args)
    table = report(times, size, args, returns)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "checkpoint.json").write_text(json.dumps(
        {"args": vars(args), "bytes": size, "seconds": times,
         "background_save_returns_seconds": returns}, indent=2))
    (RESULTS / "checkpoint.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
