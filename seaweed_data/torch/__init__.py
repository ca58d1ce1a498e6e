"""PyTorch layer of seaweed_data (datasets, samplers, checkpoints).

Importing it requires PyTorch: ``pip install "seaweed-data[torch]"``.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without torch installed
    raise ImportError(
        "seaweed_data.torch needs PyTorch: pip install 'seaweed-data[torch]'") from exc

from .checkpoint import SaveHandle, load, save
from .folder import IMG_EXTENSIONS, SeaweedImageFolder, pil_loader
from .sampler import PrefetchSampler
from .shards import ShardDataset

__all__: list[str] = [
    "IMG_EXTENSIONS", "PrefetchSampler", "SaveHandle", "SeaweedImageFolder", "ShardDataset",
    "load", "pil_loader", "save",
]
