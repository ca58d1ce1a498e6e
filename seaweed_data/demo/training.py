"""The demo's epochs: training a small CNN on CPU, or reading only, timed, with a progress bar.

Besides images per second an epoch measures how long the loop waited in ``next(loader)``: the
share of the epoch spent waiting for data. Reading-only epochs (no model) show how fast each
loader can deliver decoded samples; on a small CPU machine the CNN, not the loader, bounds
training, so that is where loaders differ.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

Stats = Callable[[], dict[str, int]]


class SmallCNN(nn.Module):
    """Three convolutions (16, 32, 64 channels), global pooling and a linear classifier."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(64, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.classifier(self.features(images))
        return result


@dataclass
class EpochResult:
    """One epoch of one loader (``loss`` and ``accuracy`` are None when reading only)."""

    epoch: int
    images: int
    seconds: float
    wait_seconds: float
    loss: float | None = None
    accuracy: float | None = None
    stats: dict[str, int] = field(default_factory=dict)
    """The dataset's cumulative counters after this epoch (SeaweedImageFolder only)."""

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def wait_share(self) -> float:
        return self.wait_seconds / self.seconds if self.seconds > 0 else 0.0


@dataclass
class CaseResult:
    """Every epoch of one loader, or why it could not run."""

    name: str
    training: bool
    epochs: list[EpochResult] = field(default_factory=list)
    error: str | None = None


class Trainer:
    """A fresh :class:`SmallCNN` (seed 0) and its optimizer; :meth:`step` trains on a batch."""

    MEAN, STD = 0.5, 0.25

    def __init__(self, classes: int) -> None:
        with torch.random.fork_rng(devices=[]):  # seeded, yet the caller's RNG is untouched
            torch.manual_seed(0)
            self.model = SmallCNN(classes)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=3e-3)

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        """One optimizer step; (summed loss, correct predictions) of the batch."""
        logits = self.model((images - self.MEAN) / self.STD)
        loss = F.cross_entropy(logits, targets)
        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return loss.item() * len(targets), int((logits.argmax(1) == targets).sum())


def run_epochs(loader: Any, epochs: int, desc: str, trainer: Trainer | None = None,
               stats: Stats | None = None) -> list[EpochResult]:
    """``epochs`` epochs over ``loader``: training ``trainer``'s model, or reading only."""
    results = []
    for epoch in range(epochs):
        sampler = loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        label = f"{desc}, epoch {epoch + 1}/{epochs}"
        results.append(_epoch(loader, epoch, label, trainer))
        if stats is not None:
            results[-1].stats = stats()
    return results


def _epoch(loader: Any, epoch: int, label: str, trainer: Trainer | None) -> EpochResult:
    seen = correct = 0
    loss_sum = wait = 0.0
    bar = tqdm(total=len(loader.sampler), unit="img", desc=label, leave=True, smoothing=0.1)
    start = time.perf_counter()
    iterator = iter(loader)
    while True:
        before = time.perf_counter()
        batch = next(iterator, None)
        wait += time.perf_counter() - before
        if batch is None:
            break
        images, targets = batch
        seen += len(targets)
        bar.update(len(targets))
        if trainer is not None:
            loss, right = trainer.step(images, targets)
            loss_sum, correct = loss_sum + loss, correct + right
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.0%}",
                            refresh=False)
    seconds = time.perf_counter() - start
    bar.close()
    if trainer is None:
        return EpochResult(epoch + 1, seen, seconds, wait)
    return EpochResult(epoch + 1, seen, seconds, wait, loss_sum / max(1, seen),
                       correct / max(1, seen))
