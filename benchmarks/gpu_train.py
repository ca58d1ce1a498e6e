"""ResNet-50 training on one CUDA GPU, fed by SeaweedImageFolder, by torchvision's ImageFolder on
local disk and by a naive filer loader: images/s and the share of step time spent waiting for
data.

One command, unattended (a few minutes on a 1-GPU, 16-core node). It starts its own
``LocalCluster``, writes a synthetic dataset (``--images`` JPEGs of ``--image-px`` pixels a
side, 10 class folders) to it and to a local directory, then trains a fresh ResNet-50 (bf16
autocast, channels_last, SGD) per loader for ``--epochs`` epochs of at most ``--steps`` steps.
Every loader gets the same DataLoader (``--workers``, ``--batch-size``, pinned memory,
persistent workers), the same transform in the workers (Pillow decode, RandomResizedCrop 224,
horizontal flip, uint8 tensor; normalisation on the GPU) and the same seeded order:

- ``SeaweedImageFolder`` + ``PrefetchSampler``, disk cache in a temporary directory;
- ``torchvision.datasets.ImageFolder`` on the local copy (the limit);
- naive: one HTTP GET per image through the filer (a keep-alive connection per worker).

Every step is synchronised, so the time spent in ``next(loader)`` is time the GPU idles: the
"waiting for data" share. Epoch 1 includes starting the workers. Writes
``benchmarks/results/gpu_train.json`` and ``.md``.

Needs CUDA and torchvision (imported only here, after the CUDA check); without a CUDA device
it says so and exits 0.
Run: ``python benchmarks/gpu_train.py [--images 8000] [--epochs 2] [--workers 12]``.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

import seaweed_data as sd
from seaweed_data.demo.data import make_jpeg, relpath
from seaweed_data.demo.loaders import NaiveFilerImages
from seaweed_data.torch import PrefetchSampler, SeaweedImageFolder

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 0
CROP = 224
MEAN = torch.tensor([0.485, 0.456, 0.406]) * 255
STD = torch.tensor([0.229, 0.224, 0.225]) * 255
OURS = "SeaweedImageFolder + PrefetchSampler"
LOCAL = "torchvision ImageFolder, local disk"
NAIVE = "naive: one HTTP GET per image via the filer"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--image-px", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="at most this many per epoch")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: smoke test
    parser.add_argument("--no-write", action="store_true", help="print only, write no results")
    return parser.parse_args(argv)


# -- data (module level: picklable for the workers) --------------------------------------------

def _jpeg(args: tuple[int, int]) -> bytes:
    return make_jpeg(*args)


def populate(client: sd.Client, local_root: Path, images: int, px: int) -> int:
    """The JPEGs, generated on every core, written to SeaweedFS and to ``local_root``."""
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 2) as pool:
        blobs = pool.map(_jpeg, [(i, px) for i in range(images)], chunksize=64)
    names = [relpath(i) for i in range(images)]
    for name, blob in zip(names, blobs, strict=True):
        (local_root / name).parent.mkdir(parents=True, exist_ok=True)
        (local_root / name).write_bytes(blob)
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda item: client.write(f"/gpu-train/{item[0]}", item[1]),
                      zip(names, blobs, strict=True)))
    return sum(len(b) for b in blobs)


class FromBytes:
    """Image bytes -> the torchvision transform's output (for loaders that hand over bytes)."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, data: bytes) -> Any:
        with Image.open(io.BytesIO(data)) as image:
            return self.transform(image.convert("RGB"))


def train_transform() -> Any:
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(CROP, antialias=True), v2.RandomHorizontalFlip(),
                       v2.PILToTensor()])


# -- training ----------------------------------------------------------------------------------

class Trainer:
    """A fresh ResNet-50 (seeded) with SGD, bf16 autocast and channels_last."""

    def __init__(self, classes: int, device: torch.device) -> None:
        from torchvision.models import resnet50

        torch.manual_seed(SEED)
        self.device = device
        self.model = resnet50(num_classes=classes).to(device, memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.mean = MEAN.view(1, 3, 1, 1).to(device)
        self.std = STD.view(1, 3, 1, 1).to(device)

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        x = images.to(self.device, non_blocking=True)
        x = ((x.float() - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        y = targets.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def warm_up(self, batch: int, steps: int = 5) -> None:
        """cuDNN autotuning and allocations, on random data, before anything is timed."""
        for _ in range(steps):
            self.step(torch.randint(0, 255, (batch, 3, CROP, CROP), dtype=torch.uint8),
                      torch.zeros(batch, dtype=torch.long))


def run_epochs(trainer: Trainer, loader: Any, args: argparse.Namespace,
               name: str) -> list[dict[str, float]]:
    """``args.epochs`` timed epochs of at most ``args.steps`` steps each."""
    epochs = []
    for epoch in range(args.epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        result = {"epoch": epoch + 1, **_epoch(trainer, loader, args.steps)}
        epochs.append(result)
        print(f"  {name}, epoch {epoch + 1}: {result['images_per_s']:,.0f} images/s, "
              f"{result['wait_share']:.0%} waiting for data", file=sys.stderr, flush=True)
    return epochs


def _epoch(trainer: Trainer, loader: Any, limit: int) -> dict[str, float]:
    waited, images, steps = 0.0, 0, 0
    start = time.perf_counter()
    iterator = iter(loader)
    while steps < limit:
        before = time.perf_counter()
        batch = next(iterator, None)
        waited += time.perf_counter() - before
        if batch is None:
            break
        trainer.step(batch[0], batch[1])
        images, steps = images + len(batch[1]), steps + 1
    seconds = time.perf_counter() - start
    del iterator
    return {"images": images, "steps": steps, "seconds": seconds,
            "images_per_s": images / seconds, "wait_share": waited / seconds}


def make_loader(dataset: Any, sampler: Any, args: argparse.Namespace) -> DataLoader[Any]:
    return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                      num_workers=args.workers, pin_memory=True, persistent_workers=True,
                      drop_last=True)


def seeded(dataset: Any) -> RandomSampler:
    return RandomSampler(dataset, generator=torch.Generator().manual_seed(SEED))


def measure(cluster: sd.LocalCluster, local_root: Path, tmp: Path,
            args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from torchvision.datasets import ImageFolder

    transform = train_transform()
    config = sd.Config(master=cluster.master_url, disk_cache_dir=str(tmp / "cache"))
    ours = SeaweedImageFolder(f"{cluster.filer_url}/gpu-train", transform=transform,
                              config=config)
    naive = NaiveFilerImages(cluster.filer_url, list(ours.samples), FromBytes(transform))
    local = ImageFolder(str(local_root), transform=transform)
    assert local.classes == ours.classes and len(local) == len(ours)
    results: dict[str, Any] = {}
    for name, dataset, sampler in (
            (OURS, ours, PrefetchSampler(seeded(ours), ours)),
            (LOCAL, local, seeded(local)),
            (NAIVE, naive, seeded(naive))):
        trainer = Trainer(len(ours.classes), device)
        trainer.warm_up(args.batch_size)
        loader = make_loader(dataset, sampler, args)
        results[name] = {"epochs": run_epochs(trainer, loader, args, name)}
        del loader
    results[OURS]["stats"] = ours.stats()
    ours.close()
    return results


# -- report ------------------------------------------------------------------------------------

def report(results: dict[str, Any], args: argparse.Namespace, data_bytes: int,
           device_name: str) -> str:
    lines = [f"# ResNet-50 training fed three ways ({args.images:,} JPEGs of {args.image_px} px, "
             f"{data_bytes / args.images / 1000:.0f} KB mean)", "",
             f"{device_name}; bf16 autocast, channels_last, batch {args.batch_size}, "
             f"{args.workers} DataLoader workers (persistent, pinned), crops of {CROP}; "
             f"{os.cpu_count()} CPU cores; torch {torch.__version__}.", "",
             "| loader | epoch | images/s | waiting for data | vs naive |",
             "|---|---|---|---|---|"]
    naive = results.get(NAIVE, {}).get("epochs", [])
    for name, result in results.items():
        for i, e in enumerate(result["epochs"]):
            base = naive[i]["images_per_s"] if i < len(naive) else 0
            ratio = f"{e['images_per_s'] / base:.2f}x" if base else "-"
            lines.append(f"| {name} | {e['epoch']} | {e['images_per_s']:,.0f} | "
                         f"{e['wait_share']:.0%} | {ratio} |")
    stats = results[OURS]["stats"]
    reads = stats["cache_hits"] + stats["cache_misses"]
    lines += ["", f"SeaweedImageFolder: cache hit rate {stats['cache_hits'] / max(1, reads):.1%},"
              f" prefetch precision "
              f"{stats['prefetch_used'] / max(1, stats['prefetch_issued']):.1%}, bytes fetched "
              f"{stats['bytes_fetched'] / max(1, data_bytes):.2f}x the data.", "",
              f"Command: `python benchmarks/gpu_train.py --images {args.images} "
              f"--epochs {args.epochs} --workers {args.workers}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_train.py needs a CUDA GPU (torch.cuda.is_available() is False here): "
              "nothing to measure on this machine.")
        return 0
    try:
        import torchvision  # noqa: F401  (only here: the rest of the project never needs it)
    except ImportError:
        print("gpu_train.py needs torchvision (pip install torchvision matching your torch).")
        return 1
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (smoke test)"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-train-") as tmpdir, \
            sd.LocalCluster(volume_size_limit_mb=1024) as cluster, cluster.client() as client:
        tmp = Path(tmpdir)
        data_bytes = populate(client, tmp / "local", args.images, args.image_px)
        print(f"wrote {args.images} JPEGs ({data_bytes / 1e6:.0f} MB) in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        results = measure(cluster, tmp / "local", tmp, args, device)
    text = report(results, args, data_bytes, name)
    print(text)
    print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "gpu_train.json").write_text(json.dumps(
            {"args": vars(args), "device": name, "data_bytes": data_bytes,
             "results": results}, indent=2) + "\n")
        (RESULTS / "gpu_train.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
