"""The demo's synthetic data: class folders of small JPEGs, and TFRecord shards of the same bytes.

Every image is a pure function of its index: class ``index % 10`` sets the angle of its stripes
(something a small CNN learns within an epoch or two), the rest is seeded noise. The JPEGs go
to ``<root>/class_XX/img_NNNNNN.jpg`` on the filer and, for the local-disk comparison, to the
same relative paths in a local directory.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..core.client import Client
from ..core.records import write_records

CLASSES = 10
WRITERS = 16
_HUES = np.array([[1.0, 0.3, 0.2], [0.2, 0.9, 0.3], [0.2, 0.4, 1.0], [0.9, 0.8, 0.2],
                  [0.8, 0.2, 0.9], [0.2, 0.9, 0.9], [1.0, 0.6, 0.4], [0.5, 0.5, 0.5],
                  [0.6, 1.0, 0.5], [0.4, 0.3, 0.8]])


@dataclass(frozen=True)
class WrittenImages:
    """What :func:`write_image_folder` wrote: relative paths, their bytes, and the total."""

    relpaths: list[str]
    blobs: list[bytes]

    @property
    def total_bytes(self) -> int:
        return sum(len(b) for b in self.blobs)


def relpath(index: int) -> str:
    """``class_XX/img_NNNNNN.jpg`` of image ``index``."""
    return f"class_{index % CLASSES:02d}/img_{index:06d}.jpg"


def make_jpeg(index: int, size: int) -> bytes:
    """A ``size`` x ``size`` JPEG: stripes at an angle set by the class, a hue, seeded noise."""
    label = index % CLASSES
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:size, 0:size] / size
    angle = np.pi * label / CLASSES
    phase = (x * np.cos(angle) + y * np.sin(angle)) * rng.uniform(14, 22) + rng.uniform(0, 6.3)
    hue = _HUES[(label + rng.integers(0, 2)) % CLASSES]
    pixels = 128 + 100 * np.sin(phase)[..., None] * hue + rng.normal(0, 20, (size, size, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def write_image_folder(client: Client, root: str, count: int, size: int,
                       local_root: Path | None = None, progress: bool = True) -> WrittenImages:
    """Generate ``count`` JPEGs and write them under ``root`` on the filer (and locally)."""
    names = [relpath(i) for i in range(count)]

    def put(index: int) -> bytes:
        blob = make_jpeg(index, size)
        client.write(f"{root}/{names[index]}", blob)
        if local_root is not None:
            target = local_root / names[index]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob)
        return blob

    with ThreadPoolExecutor(WRITERS) as pool:
        blobs = list(tqdm(pool.map(put, range(count)), total=count, unit="img",
                          desc="writing JPEGs", leave=False, disable=not progress))
    return WrittenImages(names, blobs)


def shard_names(shards: int) -> list[str]:
    return [f"train-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]


def split(items: list[bytes], parts: int) -> Iterator[list[bytes]]:
    """``parts`` contiguous slices of ``items`` of (nearly) equal length, in order."""
    base, extra = divmod(len(items), parts)
    start = 0
    for part in range(parts):
        stop = start + base + (1 if part < extra else 0)
        yield items[start:stop]
        start = stop


def write_tfrecord_shards(client: Client, directory: str, records: list[bytes],
                          shards: int) -> list[str]:
    """``records`` (raw JPEG bytes) framed as TFRecord into ``shards`` files; their paths."""
    paths = []
    for name, part in zip(shard_names(shards), split(records, shards), strict=True):
        out = io.BytesIO()
        write_records(out, part)
        path = f"{directory}/{name}"
        client.write(path, out.getvalue())
        paths.append(path)
    return paths
