"""Image-folder reading through a DataLoader, side by side on one local SeaweedFS (issue #4).

10,000 JPEG files of ~13 KB (``--files``) in 10 class folders, written once both to SeaweedFS
(``/buckets/bench/train/<class>/<file>.jpg``, so the S3 gateway serves them as
``s3://bench/train/...``) and to a local directory. Every case reads the same samples through a
``DataLoader(num_workers=2, batch_size=64)`` in the order of a ``RandomSampler`` with the same
seeded generator, the loader returning the raw bytes and the collate function a plain list:

- ``SeaweedImageFolder`` + ``PrefetchSampler``, ``persistent_workers=False``: epoch 1 with a cold
  cache (a fresh disk-cache directory and a fresh dataset every round) and epoch 2 (the same
  loader's second epoch: fresh worker processes, served by the shared disk tier);
- the same with ``persistent_workers=True`` (epoch 2 served by the workers' memory tier too);
- for reference, the first variant without a disk tier (``disk_cache_dir=None``): what the
  disk tier costs in epoch 1 (epoch 2 then fetches again: fresh workers, no shared tier);
- a naive map-style dataset, one ``requests.get(filer_url + path)`` per item (a
  ``requests.Session`` per worker process);
- s3torchconnector's ``S3MapDataset.from_prefix`` through the SeaweedFS S3 gateway (when the
  package is installed);
- the same files on local disk (``open(path, 'rb').read()``).

Decode variant: the loader decodes with Pillow and converts to a tensor
(``torch.from_numpy(np.asarray(img))``), for ``SeaweedImageFolder`` epoch 2 against local disk.

Rounds are interleaved (every case once per round) after one untimed warm-up pass of the local
and naive cases (page cache, server caches); medians are reported. Times include starting the
epoch's worker processes, as a training loop would see them. After each case that filled a
disk cache, ``os.sync()`` (untimed) writes its pages out, so that the kernel's writeback does
not land in a later case. Writes JSON and Markdown to
``benchmarks/results/imagefolder.*``.
Run: ``python benchmarks/imagefolder_bench.py [--files 10000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler

import seaweed_data as sd
from seaweed_data.torch import PrefetchSampler, SeaweedImageFolder

# torch.from_numpy of Pillow's read-only array: harmless here, but warns in every worker.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

RESULTS = Path(__file__).resolve().parent / "results"
BUCKET = "bench"
PREFIX = "train"
CLASSES = 10
SEED = 1234
WORKERS = 2
BATCH = 64


# -- data ----------------------------------------------------------------------------------------

def make_jpeg(index: int) -> bytes:
    """A random-ish 144x144 JPEG of about 13 KB (smooth waves plus noise), seeded by index."""
    rng = np.random.default_rng(index)
    h = w = 144
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(x / rng.uniform(5, 30) + rng.uniform(0, 6)) * rng.uniform(40, 120)
                     + 128 + np.cos(y / rng.uniform(5, 30)) * 40 for _ in range(3)], -1)
    pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=85)
    return out.getvalue()


def relpaths(files: int) -> list[str]:
    return [f"class_{i % CLASSES:02d}/img_{i:06d}.jpg" for i in range(files)]


def populate(client: sd.Client, local_root: Path, files: int) -> int:
    rels = relpaths(files)
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 2) as pool:
        blobs = pool.map(make_jpeg, range(files), chunksize=64)
    for rel, blob in zip(rels, blobs, strict=True):
        target = local_root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
    remote_root = f"/buckets/{BUCKET}/{PREFIX}"
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: client.write(f"{remote_root}/{item[0]}", item[1]),
                      zip(rels, blobs, strict=True)))
    return sum(len(b) for b in blobs)


# -- loaders and datasets (module level: picklable) ----------------------------------------------

def raw(data: bytes) -> bytes:
    return data


def decode(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")))


def as_list(batch: list[Any]) -> list[Any]:
    return batch


def s3_raw(reader: Any) -> bytes:
    data: bytes = reader.read()
    return data


class NaiveHTTP(Dataset[tuple[bytes, int]]):
    """One ``requests.get`` through the filer per item, a Session per process."""

    def __init__(self, filer: str, samples: list[tuple[str, int]]) -> None:
        self.filer, self.samples = filer, samples
        self._session: requests.Session | None = None
        self._pid = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        if self._session is None or self._pid != os.getpid():
            self._session, self._pid = requests.Session(), os.getpid()
        path, target = self.samples[index]
        response = self._session.get(self.filer + path, timeout=60)
        response.raise_for_status()
        return response.content, target

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_session": None, "_pid": 0}


class LocalFiles(Dataset[tuple[Any, int]]):
    def __init__(self, samples: list[tuple[str, int]],
                 loader: Callable[[bytes], Any] = raw) -> None:
        self.samples, self.loader = samples, loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        with open(path, "rb") as f:
            return self.loader(f.read()), target


# -- measuring -----------------------------------------------------------------------------------

def sampler_for(dataset: Any) -> RandomSampler:
    return RandomSampler(dataset, generator=torch.Generator().manual_seed(SEED))


def loader_for(dataset: Any, sampler: Any, persistent: bool = False) -> DataLoader[Any]:
    return DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=WORKERS,
                      collate_fn=as_list, persistent_workers=persistent)


def epoch(loader: Iterable[Any], expected: int) -> float:
    gc.collect()
    start = time.perf_counter()
    seen = 0
    for batch in loader:
        seen += len(batch)
    elapsed = time.perf_counter() - start
    if seen != expected:
        raise RuntimeError(f"epoch delivered {seen} samples, expected {expected}")
    return elapsed


class Bench:
    def __init__(self, cluster: sd.LocalCluster, files: int, local_root: Path,
                 tmp: Path) -> None:
        self.cluster, self.files, self.tmp = cluster, files, tmp
        self.root = f"{cluster.filer_url}/buckets/{BUCKET}/{PREFIX}"
        self.times: dict[str, list[float]] = {}
        self.stats: dict[str, list[dict[str, int]]] = {}
        self._round = 0
        probe = self.folder(raw)
        self.remote_samples = [(path, t) for path, t in probe.samples]
        remote_prefix = f"/buckets/{BUCKET}/{PREFIX}/"
        self.local_samples = [(str(local_root / p[len(remote_prefix):]), t)
                              for p, t in probe.samples]
        probe.close()
        self.s3_ok = False
        try:
            import s3torchconnector  # noqa: F401
            self.s3_ok = True
        except ImportError:
            pass

    def folder(self, loader: Callable[[bytes], Any], disk: bool = True) -> SeaweedImageFolder:
        cache = tempfile.mkdtemp(prefix="sd-cache-", dir=self.tmp) if disk else None
        config = sd.Config(master=self.cluster.master_url, disk_cache_dir=cache)
        return SeaweedImageFolder(self.root, loader=loader, config=config)

    def record(self, case: str, seconds: float) -> None:
        self.times.setdefault(case, []).append(seconds)

    def ours(self, tag: str, loader_fn: Callable[[bytes], Any], persistent: bool,
             disk: bool = True) -> None:
        ds = self.folder(loader_fn, disk)
        loader = loader_for(ds, PrefetchSampler(sampler_for(ds), ds), persistent)
        self.record(f"{tag} epoch 1 (cold)", epoch(loader, self.files))
        self.record(f"{tag} epoch 2 (warm)", epoch(loader, self.files))
        self.stats.setdefault(tag, []).append(ds.stats())
        del loader
        ds.close()
        # The cache directory (a few pack files) stays until the run ends: freeing its
        # blocks on this VM's ext4 (mounted with 'discard') would slow the next case's writes.
        # Its pages go to disk now, untimed: the kernel would write them back ~30 s later, in
        # the middle of whichever case runs then.
        os.sync()

    def naive(self) -> float:
        ds = NaiveHTTP(self.cluster.filer_url, self.remote_samples)
        return epoch(loader_for(ds, sampler_for(ds)), self.files)

    def local(self, loader_fn: Callable[[bytes], Any] = raw) -> float:
        ds = LocalFiles(self.local_samples, loader_fn)
        return epoch(loader_for(ds, sampler_for(ds)), self.files)

    def s3(self) -> float:
        from s3torchconnector import S3ClientConfig, S3MapDataset
        ds = S3MapDataset.from_prefix(
            f"s3://{BUCKET}/{PREFIX}/", region="us-east-1", endpoint=self.cluster.s3_url,
            transform=s3_raw, s3client_config=S3ClientConfig(force_path_style=True))
        if len(ds) != self.files:  # lists the prefix (untimed), in the main process
            raise RuntimeError(f"S3MapDataset lists {len(ds)} objects, expected {self.files}")
        return epoch(loader_for(ds, sampler_for(ds)), self.files)

    def run_round(self, log: Callable[[str], None]) -> None:
        self._round += 1
        steps: list[tuple[str, Callable[[], None]]] = [
            ("ours raw, persistent_workers=False",
             lambda: self.ours("SeaweedImageFolder raw, persistent_workers=False", raw, False)),
            ("ours raw, persistent_workers=True",
             lambda: self.ours("SeaweedImageFolder raw, persistent_workers=True", raw, True)),
            ("ours raw, memory tier only",
             lambda: self.ours("SeaweedImageFolder raw, no disk tier, persistent_workers=False",
                               raw, False, disk=False)),
            ("naive", lambda: self.record("naive requests GET per item", self.naive())),
            ("local raw", lambda: self.record("local disk raw", self.local())),
            ("ours decode",
             lambda: self.ours("SeaweedImageFolder decode, persistent_workers=False", decode,
                               False)),
            ("local decode", lambda: self.record("local disk decode", self.local(decode))),
        ]
        if self.s3_ok:
            steps.insert(3, ("s3torchconnector",
                             lambda: self.record("s3torchconnector S3MapDataset", self.s3())))
        for name, step in steps:
            start = time.perf_counter()
            step()
            log(f"  round {self._round}: {name} done in {time.perf_counter() - start:.1f} s")


# -- report --------------------------------------------------------------------------------------

def median_rate(times: list[float], files: int) -> float:
    return files / statistics.median(times)


def report(bench: Bench, args: argparse.Namespace, mean_bytes: float,
           setup_s: float) -> tuple[str, dict[str, Any]]:
    files = args.files
    rates = {case: median_rate(t, files) for case, t in bench.times.items()}
    local = rates.get("local disk raw")
    local_dec = rates.get("local disk decode")
    naive = rates.get("naive requests GET per item")
    lines = [
        f"# Image folder through a DataLoader ({files:,} JPEG files, "
        f"{mean_bytes / 1000:.1f} KB mean)",
        "",
        f"{WORKERS} workers, batch {BATCH}, RandomSampler(seed={SEED}), raw bytes unless "
        f"'decode'; medians of {args.rounds} interleaved rounds; SeaweedFS on the same machine "
        f"({os.cpu_count()} cores); python {sys.version.split()[0]}, torch {torch.__version__}.",
        "",
        "| case | images/s (median) | min-max | vs local disk (same loader) | vs naive |",
        "|---|---|---|---|---|",
    ]
    for case, t in bench.times.items():
        ref = local_dec if "decode" in case else local
        lo, hi = files / max(t), files / min(t)
        vs_local = f"{rates[case] / ref:.2f}x" if ref else "-"
        vs_naive = f"{rates[case] / naive:.2f}x" if naive else "-"
        lines.append(f"| {case} | {rates[case]:,.0f} | {lo:,.0f}-{hi:,.0f} | {vs_local} | "
                     f"{vs_naive} |")

    def ratio(a: str, b: str) -> float | None:
        return rates[a] / rates[b] if a in rates and b in rates else None

    targets = [
        ("epoch 1 (cold) vs naive", ratio("SeaweedImageFolder raw, persistent_workers=False "
                                          "epoch 1 (cold)", "naive requests GET per item"), 5.0),
        ("epoch 2 (warm, persistent_workers=False) vs local disk",
         ratio("SeaweedImageFolder raw, persistent_workers=False epoch 2 (warm)",
               "local disk raw"), 0.8),
        ("epoch 2 (warm, persistent_workers=True) vs local disk",
         ratio("SeaweedImageFolder raw, persistent_workers=True epoch 2 (warm)",
               "local disk raw"), 0.8),
        ("decode epoch 2 vs local decode",
         ratio("SeaweedImageFolder decode, persistent_workers=False epoch 2 (warm)",
               "local disk decode"), 0.9),
        ("s3torchconnector vs local disk",
         ratio("s3torchconnector S3MapDataset", "local disk raw"), None),
        ("naive vs local disk", ratio("naive requests GET per item", "local disk raw"), None),
    ]
    lines += ["", "| ratio | measured | target | met |", "|---|---|---|---|"]
    for name, value, target in targets:
        shown = "n/a" if value is None else f"{value:.2f}x"
        goal = "-" if target is None else f">= {target}x"
        met = "-" if target is None or value is None else ("yes" if value >= target else "NO")
        lines.append(f"| {name} | {shown} | {goal} | {met} |")
    if not bench.s3_ok:
        lines += ["", "s3torchconnector is not installed: its row is missing."]
    lines += ["", f"Setup (generate, write to SeaweedFS and local disk): {setup_s:.1f} s.",
              "", "Command: `python benchmarks/imagefolder_bench.py "
              f"--files {files} --rounds {args.rounds}`"]
    data = {
        "files": files, "rounds": args.rounds, "mean_file_bytes": mean_bytes,
        "workers": WORKERS, "batch_size": BATCH, "seed": SEED, "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "python": sys.version.split()[0],
        "times_s": bench.times, "images_per_s_median": rates,
        "ratios": {name: value for name, value, _ in targets},
        "targets": {name: target for name, _, target in targets if target is not None},
        "seaweed_stats_per_round": bench.stats, "setup_s": setup_s,
    }
    return "\n".join(lines) + "\n", data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only, write no results")
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="imagefolder-bench-") as tmpdir, \
            sd.LocalCluster(s3=True) as cluster:
        tmp = Path(tmpdir)
        os.environ.setdefault("AWS_ACCESS_KEY_ID", cluster.s3_access_key)
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", cluster.s3_secret_key)
        local_root = tmp / "local" / PREFIX
        client = cluster.client()
        t0 = time.perf_counter()
        total = populate(client, local_root, args.files)
        setup_s = time.perf_counter() - t0
        client.close()
        log(f"wrote {args.files} files ({total / 1e6:.1f} MB) in {setup_s:.1f} s")
        bench = Bench(cluster, args.files, local_root, tmp)
        if not bench.s3_ok:
            log("s3torchconnector is not installed: skipping its case")
        # Untimed warm-up: page cache for the local files, server-side caches, imports.
        bench.local()
        bench.naive()
        for _ in range(args.rounds):
            bench.run_round(log)
        markdown, data = report(bench, args, total / args.files, setup_s)
    data["total_runtime_s"] = time.perf_counter() - started
    print(markdown)
    log(f"total runtime {data['total_runtime_s']:.0f} s")
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "imagefolder.json").write_text(json.dumps(data, indent=2) + "\n")
        (RESULTS / "imagefolder.md").write_text(markdown)


if __name__ == "__main__":
    main()
