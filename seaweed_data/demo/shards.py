"""Reading the demo's TFRecord shards back: with ``seaweed_data.tf`` (tf.data) when TensorFlow
is installed, else with ``seaweed_data.torch.ShardDataset``."""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Any

from ..config import Config
from .report import ShardCheck


def tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def read_back(filer: str, paths: list[str], expected: list[bytes], config: Config) -> ShardCheck:
    """Read every record of ``paths`` in order and compare with ``expected``."""
    locations = [filer + p for p in paths]
    start = time.perf_counter()
    reader, records = _read(locations, config)
    seconds = time.perf_counter() - start
    return ShardCheck(reader, len(paths), len(records), sum(len(r) for r in records), seconds,
                      records == expected)


def _read(locations: list[str], config: Config) -> tuple[str, list[bytes]]:
    if tensorflow_available():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            from ..tf import TFRecordDataset
        except ImportError:
            pass
        else:
            return ("seaweed_data.tf.TFRecordDataset (tf.data)",
                    _read_tf(TFRecordDataset(locations, config=config)))
    from ..torch import ShardDataset

    dataset = ShardDataset(locations, config=config)
    try:
        return "seaweed_data.torch.ShardDataset", [bytes(r) for r in dataset]
    finally:
        dataset.close()


def _read_tf(dataset: Any) -> list[bytes]:
    records: list[bytes] = []
    for batch in dataset.batch(1024):
        records.extend(bytes(r) for r in batch.numpy())
    return records
