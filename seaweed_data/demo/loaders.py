"""What the demo feeds its CNN with: a decoder shared by every loader, and the two baselines.

- :class:`DecodeImage`: image bytes to a float tensor (C, H, W) in [0, 1], resized to a square;
  every loader uses it, so they differ only in how the bytes arrive.
- :class:`NaiveFilerImages`: what ``requests.get(filer_url + path)`` in ``__getitem__`` does:
  one HTTP GET per image through the filer, on a keep-alive connection per process.
- :class:`LocalImages`: the same images read from a local directory (the limit to aim for).
"""

from __future__ import annotations

import http.client
import io
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..core.location import quote_path

Sample = tuple[Any, int]
Decode = Callable[[bytes], Any]


class DecodeImage:
    """Image bytes -> RGB float tensor ``(3, size, size)`` in [0, 1] (picklable)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (self.size, self.size))  # JPEG: decode at a reduced scale
            rgb = image.convert("RGB")
        if rgb.size != (self.size, self.size):
            rgb = rgb.resize((self.size, self.size), Image.Resampling.BILINEAR)
        array = np.asarray(rgb, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class NaiveFilerImages(Dataset[Sample]):
    """One HTTP GET through the filer per sample (a keep-alive connection per process)."""

    def __init__(self, filer: str, samples: list[tuple[str, int]], decode: Decode) -> None:
        self.filer, self.samples, self.decode = filer, samples, decode
        self._connection: http.client.HTTPConnection | None = None
        self._pid = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        path, target = self.samples[index]
        return self.decode(self._get(path)), target

    def _get(self, path: str) -> bytes:
        if self._connection is None or self._pid != os.getpid():
            self._connection, self._pid = _connect(self.filer), os.getpid()
        self._connection.request("GET", quote_path(path))
        response = self._connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"GET {self.filer}{path}: HTTP {response.status}")
        return body

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_connection": None, "_pid": 0}


def _connect(filer: str) -> http.client.HTTPConnection:
    parts = urlsplit(filer)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return kind(parts.hostname or "127.0.0.1", parts.port, timeout=60)


class LocalImages(Dataset[Sample]):
    """The same samples read from local files."""

    def __init__(self, samples: list[tuple[str, int]], decode: Decode) -> None:
        self.samples, self.decode = samples, decode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        path, target = self.samples[index]
        with open(path, "rb") as f:
            return self.decode(f.read()), target
