"""Running the demo: on a fresh LocalCluster, on a given filer, or on your own image folder."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler

from ..config import Config
from ..core.client import Client
from ..core.location import normalize_filer, parse_location
from ..torch import PrefetchSampler, SeaweedImageFolder
from . import data as demo_data
from .loaders import DecodeImage, LocalImages, NaiveFilerImages
from .report import LOCAL, NAIVE, SEAWEED, DemoReport, save_chart
from .shards import read_back
from .training import CaseResult, Trainer, run_epochs

Say = Callable[[str], None]


def default_chart() -> Path:
    return Path(tempfile.gettempdir()) / "seaweed-data-demo.png"


@dataclass(frozen=True)
class DemoOptions:
    """Sizes of the demo (the defaults finish in about a minute on 2 CPU cores)."""

    images: int = 3000
    """Images to generate; with your own data, at most this many samples per epoch."""
    image_size: int = 64
    epochs: int = 2
    batch_size: int = 64
    workers: int = 2
    shards: int = 4
    seed: int = 0
    chart: Path = field(default_factory=default_chart)


def run_demo(options: DemoOptions = DemoOptions(), filer: str | None = None,
             data: str | None = None, say: Say = lambda _: None) -> DemoReport:
    """Run the demo and return its report (the CLI prints ``format_table(report)``).

    Without ``filer`` and ``data`` it starts a :class:`LocalCluster` and generates the data.
    With ``filer`` only, it generates the data there (under a fresh directory, removed at the
    end). With ``data`` (an image-folder location, on ``filer`` if given) it reads that folder
    and generates nothing. ``say`` receives progress messages.
    """
    started = time.perf_counter()
    if filer is None and data is None:
        from ..core.cluster import LocalCluster

        say("starting a local SeaweedFS (master, volume server, filer) on 127.0.0.1 ...")
        with LocalCluster() as cluster:
            say(f"filer {cluster.filer_url}, master {cluster.master_url} "
                f"(up in {time.perf_counter() - started:.1f} s)")
            config = Config(master=cluster.master_url, filer_grpc_port=cluster.filer_grpc_port)
            report = Demo(cluster.filer_url, config, options, say).generated("/demo")
    elif data is not None:
        location = parse_location(data, normalize_filer(filer) if filer else None)
        report = Demo(location.filer, Config.from_env(), options, say).existing(location.path)
    else:
        assert filer is not None
        base = f"/seaweed-data-demo-{uuid.uuid4().hex[:8]}"
        demo = Demo(normalize_filer(filer), Config.from_env(), options, say)
        try:
            report = demo.generated(base)
        finally:
            with Client(demo.filer, demo.config) as client:
                client.delete(base, recursive=True)
    report.setup += f"; total {time.perf_counter() - started:.0f} s"
    return report


class Demo:
    """One run of the demo against one filer."""

    def __init__(self, filer: str, config: Config, options: DemoOptions, say: Say) -> None:
        self.filer, self.config, self.options, self.say = filer, config, options, say
        self.decode = DecodeImage(options.image_size)

    def generated(self, base: str) -> DemoReport:
        """Write images and shards under ``base``, train on them, read the shards back."""
        o = self.options
        with tempfile.TemporaryDirectory(prefix="seaweed-data-demo-") as tmp:
            local_root = Path(tmp) / "local"
            self.say(f"writing {o.images:,} JPEGs ({o.image_size}x{o.image_size}, "
                     f"{demo_data.CLASSES} classes) to {self.filer}{base}/images "
                     "and to a local directory ...")
            start = time.perf_counter()
            with Client(self.filer, self.config) as client:
                written = demo_data.write_image_folder(client, f"{base}/images", o.images,
                                                       o.image_size, local_root)
                shard_paths = demo_data.write_tfrecord_shards(client, f"{base}/shards",
                                                              written.blobs, o.shards)
            setup = time.perf_counter() - start
            report = self.train_all(f"{base}/images", Path(tmp), local_root, written.total_bytes)
            report.setup = f"setup: data written in {setup:.1f} s"
            self.say(f"reading the {o.shards} TFRecord shards back ...")
            report.shards = read_back(self.filer, shard_paths, written.blobs, self.config)
            return self.finish(report)

    def existing(self, root: str) -> DemoReport:
        """Train on the image folder at ``root`` (no local copy, no shards)."""
        with tempfile.TemporaryDirectory(prefix="seaweed-data-demo-") as tmp:
            report = self.train_all(root, Path(tmp), None, None)
        report.notes.append("your data: no local-disk row and no TFRecord shards")
        return self.finish(report)

    def finish(self, report: DemoReport) -> DemoReport:
        report.chart = save_chart(report, self.options.chart)
        return report

    def train_all(self, root: str, tmp: Path, local_root: Path | None,
                  data_bytes: int | None) -> DemoReport:
        """Train through SeaweedImageFolder; then read only with it, the naive loader and
        local disk."""
        self.say(f"listing {self.filer}{root} ...")
        dataset = self.folder(root, tmp / "cache-train")
        try:
            classes, samples = len(dataset.classes), list(dataset.samples)
            if data_bytes is None and len(dataset) <= self.options.images:
                data_bytes = sum(entry.size for entry in dataset.entries)
            training = self.case(SEAWEED, dataset, Trainer(classes), fail=True)
        finally:
            dataset.close()
        self.say("the same samples, reading only (no model):")
        dataset = self.folder(root, tmp / "cache-read")
        try:
            reading = [self.case(SEAWEED, dataset, fail=True)]
        finally:
            dataset.close()
        reading.append(self.case(NAIVE, NaiveFilerImages(self.filer, samples, self.decode)))
        if local_root is not None:
            prefix = root.rstrip("/") + "/"
            local = [(str(local_root / p[len(prefix):]), t) for p, t in samples]
            reading.append(self.case(LOCAL, LocalImages(local, self.decode)))
        return DemoReport(self.describe(root, len(samples), classes), data_bytes or 0,
                          training, reading)

    def folder(self, root: str, cache: Path) -> SeaweedImageFolder:
        config = self.config.replace(disk_cache_dir=str(cache))
        return SeaweedImageFolder(self.filer + root, loader=self.decode, config=config)

    def describe(self, root: str, found: int, classes: int) -> str:
        o = self.options
        return (f"{min(found, o.images):,} images per epoch ({classes} classes, "
                f"{self.filer}{root}), {o.image_size}x{o.image_size} tensors; DataLoader("
                f"num_workers={o.workers}, batch_size={o.batch_size}), {o.epochs} epochs, "
                f"{os.cpu_count()} CPU cores")

    def sampler(self, dataset: Any) -> RandomSampler:
        count = min(len(dataset), self.options.images)
        generator = torch.Generator().manual_seed(self.options.seed)
        return RandomSampler(dataset, num_samples=count, generator=generator)

    def case(self, name: str, dataset: Any, trainer: Trainer | None = None,
             fail: bool = False) -> CaseResult:
        """Epochs over ``dataset`` (training if ``trainer``); a baseline's failure is
        reported, ours (``fail``) raised."""
        o = self.options
        sampler: Any = self.sampler(dataset)
        stats = None
        if isinstance(dataset, SeaweedImageFolder):
            sampler, stats = PrefetchSampler(sampler, dataset), dataset.stats
        loader = DataLoader(dataset, batch_size=o.batch_size, sampler=sampler,
                            num_workers=o.workers)
        try:
            epochs = run_epochs(loader, o.epochs, name.split(":")[0], trainer, stats)
        except Exception as exc:
            if fail:
                raise
            return CaseResult(name, trainer is not None, error=f"{type(exc).__name__}: {exc}")
        return CaseResult(name, trainer is not None, epochs)
