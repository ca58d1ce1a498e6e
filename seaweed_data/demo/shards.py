"""Reading the demo's TFRecord shards back: with ``seaweed_data.tf`` (tf.data) when TensorFlow
is installed, else with ``seaweed_data.torch.ShardDataset``."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from time import perf_counter
from typing import Any

from ..config import Config
from .report import ShardCheck


def tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def read_back(filer: str, paths: list[str], expected: list[bytes], config: Config) -> ShardCheck:
    """Read every record of ``paths`` in order and compare with ``expected``. The time counts
    the read, not importing its reader (TensorFlow's import alone takes seconds)."""
    locations = [filer + p for p in paths]
    reader, read = _reader(locations, config)
    start = perf_counter()
    records = read()
    seconds = perf_counter() - start
    return ShardCheck(reader, len(paths), len(records), sum(len(r) for r in records), seconds,
                      records == expected)


def _reader(locations: list[str], config: Config) -> tuple[str, Callable[[], list[bytes]]]:
    """The reader's name and a function reading every record; its modules are imported."""
    if tensorflow_available():
        # TensorFlow's start-up log lines are noise here: it only reads records. The oneDNN
        # notice ignores the log level; without oneDNN (math only) it is not printed.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        try:
            from ..tf import TFRecordDataset
        except ImportError:
            pass
        else:
            return ("seaweed_data.tf.TFRecordDataset (tf.data)",
                    lambda: _read_tf(TFRecordDataset(locations, config=config)))
    from ..torch import ShardDataset

    def read_torch() -> list[bytes]:
        dataset = ShardDataset(locations, config=config)
        try:
            return [bytes(r) for r in dataset]
        finally:
            dataset.close()

    return "seaweed_data.torch.ShardDataset", read_torch


def _read_tf(dataset: Any) -> list[bytes]:
    records: list[bytes] = []
    for batch in dataset.batch(1024):
        records.extend(bytes(r) for r in batch.numpy())
    return records
