"""``seaweed-data demo``: train a small CNN straight from SeaweedFS and compare the loaders.

What it does (``make demo``, or ``seaweed-data demo``):

1. starts a :class:`~seaweed_data.LocalCluster` (master, volume server, filer on free loopback
   ports);
2. writes a synthetic image dataset (``--images`` small JPEGs in 10 class folders) to it and to
   a local directory, plus the same bytes as a few TFRecord shards;
3. trains a small CNN (three conv layers, CPU) for ``--epochs`` epochs reading through
   :class:`~seaweed_data.torch.SeaweedImageFolder` + :class:`~seaweed_data.torch.PrefetchSampler`
   (DataLoader with 2 workers, a disk cache in a temporary directory), with a live progress
   bar; then trains the same CNN, from the same seed and in the same order, fed by a naive
   loader (one HTTP GET per image through the filer) and by local disk;
4. prints images/s and the share of each epoch spent waiting for data, the engine's cache hit
   rate, prefetch precision and bytes fetched (``dataset.stats()``); reads the TFRecord shards
   back (``seaweed_data.tf`` when TensorFlow is installed, else ``ShardDataset``) and checks
   every record; saves a PNG chart and prints its path.

``--filer URL`` runs it on your cluster (data written under a fresh directory, removed after);
``--data LOCATION`` trains on your own image folder instead of generating one.

Needs the ``torch`` extra; the chart needs matplotlib (the ``demo`` extra).
"""

from __future__ import annotations

from .report import DemoReport, format_table
from .run import DemoOptions, run_demo

__all__ = ["DemoOptions", "DemoReport", "format_table", "run_demo"]
