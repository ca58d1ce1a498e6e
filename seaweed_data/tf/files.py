"""``FileDataset``: whole files from SeaweedFS as ``(path, bytes)`` elements of a ``tf.data``
pipeline, e.g. JPEGs for ``tf.io.decode_jpeg``.

Each iteration expands the globs on the filer, announces the whole order to the engine
(``Client.set_hints``: metadata comes from directory listings, and the engine keeps
``prefetch`` files fetched ahead of the reader) and reads the files in batches with
``Client.read_many`` (concurrent, order kept), handed to TensorFlow a batch at a time and
``unbatch``'ed there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from ..config import Config
from ..core.client import Client
from ..core.location import parse_location
from .clients import SourceClients
from .paths import STRINGS, as_is, python_names

log = logging.getLogger(__name__)

READ_BATCH = 64
"""Files read with one ``Client.read_many`` and handed to TensorFlow together."""


@as_is
def FileDataset(paths: Any, *, config: Config | None = None,
                prefetch: int = 64) -> Any:
    """A ``tf.data.Dataset`` of ``(path, contents)`` scalar string pairs, in the given order.

    >>> ds = FileDataset("seaweedfs://filer:8888/flowers/*/*.jpg")      # doctest: +SKIP
    >>> images = ds.map(lambda path, data: tf.io.decode_jpeg(data))     # doctest: +SKIP

    ``paths``: a location, a glob (expanded on the filer when iterated, sorted), a list of
    them or an eager string tensor; ``path`` in each element is the name as given (a glob's
    matches in the pattern's form). The engine keeps ``prefetch`` files fetched ahead of the
    reader (``prefetch=0``: none, only the concurrent reads of each batch). ``config`` gives
    the client options; clients are created on first use in the process that iterates.
    Sharding with ``shard`` or ``tf.distribute`` (DATA) works on the elements: every worker
    reads every file, so give each worker its own ``paths`` to split the reads.
    """
    names = python_names(paths)
    if names is None:
        raise TypeError("FileDataset needs paths known in Python (a string, a list or an "
                        "eager tensor), not a graph tensor")
    for name in names:
        parse_location(name)
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"prefetch must be an int >= 0, got {prefetch!r}")
    options = (config or Config.from_env()).replace(prefetch_items=max(1, prefetch))
    source = FileSource(names, SourceClients(options), prefetch)
    dataset = tf.data.Dataset.from_generator(source.batches, output_signature=(STRINGS,
                                                                                STRINGS))
    return source.clients.owned_by(dataset.unbatch())



class FileSource:
    """The Python side of one ``FileDataset``: the order, the hints and the reads."""

    def __init__(self, names: list[str], clients: SourceClients, prefetch: int) -> None:
        self.names = names
        self.clients = clients
        self.prefetch = prefetch

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One iteration: ``(names, contents)`` arrays of up to :data:`READ_BATCH` files."""
        names = [match for name in self.names for match in self.clients.expand(name)]
        log.debug("FileDataset: reading %d files, %d ahead", len(names), self.prefetch)
        located = [self.clients.locate(name) for name in names]
        if self.prefetch > 0:
            self._announce(located)
        for start in range(0, len(names), READ_BATCH):
            contents = read_in_order(located[start:start + READ_BATCH])
            yield (np.array(names[start:start + READ_BATCH], dtype=object),
                   np.array(contents, dtype=object))

    def _announce(self, located: list[tuple[Client, str]]) -> None:
        by_client: dict[int, tuple[Client, list[str]]] = {}
        for client, path in located:
            by_client.setdefault(id(client), (client, []))[1].append(path)
        for client, paths in by_client.values():
            client.set_hints(paths)


def read_in_order(located: list[tuple[Client, str]]) -> list[bytes]:
    """The contents of the files, each client's with one concurrent ``read_many``."""
    positions: dict[int, tuple[Client, list[int]]] = {}
    for i, (client, _) in enumerate(located):
        positions.setdefault(id(client), (client, []))[1].append(i)
    contents: list[bytes] = [b""] * len(located)
    for client, indices in positions.values():
        for i, data in zip(indices, client.read_many([located[i][1] for i in indices]),
                           strict=True):
            contents[i] = data
    return contents
