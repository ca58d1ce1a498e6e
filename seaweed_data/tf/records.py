"""``TFRecordDataset``: ``tf.data.TFRecordDataset`` over files stored on SeaweedFS.

The pipeline it builds, from the file names down (each step is an ordinary ``tf.data``
transformation, so ``shard``, ``tf.function`` and ``tf.distribute`` treat it as usual)::

    names                      the locations (globs expanded on the filer when iterated)
    .scan(number)              (n, name): each iteration numbers its files 0, 1, 2, ...
    .map(announce)             tells ShardReads which file comes next; holds a reader op
    .prefetch(k)               so announcements run k files ahead of the readers
    .flat_map                  per file: frames read and checked in Python, handed over a
       (file_windows)          window at a time (a generator of the window's bytes and its
                               records' offsets and lengths)
    .map(cut_records)          TensorFlow cuts the records out (``tf.strings.substr``)
    .unbatch()                 and hands them out one by one

With ``num_parallel_reads`` the files are read by ``.interleave`` instead of ``.flat_map``,
each file's windows cut and unbatched inside it (``read_file``), since its records, not its
windows, alternate between files. Without it, the cutting is one ``map`` after the
``flat_map``: tf.data parallelizes and autotunes every ``map`` it sees, and one per file cost
more than the cutting itself (``benchmarks/tfrecord_bench.py``, case c2, 8 x 32 MB already in
memory: 0.29-0.30 s with a map per file, 0.23-0.24 s with one; run medians).

These are the transformations ``tf.data.TFRecordDataset`` applies to its file names
(``flat_map``; with ``num_parallel_reads``, ``interleave`` with ``cycle_length``
``num_parallel_reads``, ``block_length`` 1, deterministic unless the options say otherwise),
so records come out in the same order. The ``announce`` map also holds a ``TFRecordDataset``
op of the name (created, never iterated): a reader op that ``tf.distribute``'s FILE
auto-sharding recognises, so it shards the *names* right before this map (each worker
announces and reads only its own files); DATA sharding shards the records as usual.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Iterator
from typing import IO, Any

import numpy as np
import tensorflow as tf

from ..config import Config
from ..core.records import COMPRESSIONS, iter_records
from .allocator import reuse_large_allocations
from .clients import SourceClients
from .framing import MAX_READ, Window, frame_windows, window_of
from .paths import as_is, names_dataset
from .shard_reads import ShardReads

log = logging.getLogger(__name__)

BATCH_RECORDS = 1024
"""At most this many records per window of a compressed file."""
BATCH_BYTES = 4 << 20
"""A window of a compressed file closes once its records reach this many bytes."""
WINDOWS = (tf.TensorSpec([], tf.string), tf.TensorSpec([None], tf.int64),
           tf.TensorSpec([None], tf.int64))
"""What the generator yields: a :class:`~seaweed_data.tf.framing.Window`."""
STREAM_READ = 1 << 20
"""Bytes asked of a streamed file at a time: a larger read than the readahead window is
not seen as sequential by ``Client.open``'s reader, which would then stop reading ahead."""


@as_is
def TFRecordDataset(filenames: Any, compression_type: str | None = None,
                    buffer_size: int | None = None, num_parallel_reads: int | None = None,
                    name: str | None = None, *, config: Config | None = None,
                    prefetch: int = 2) -> Any:
    """The records of TFRecord files on SeaweedFS, as ``tf.data.TFRecordDataset`` reads them.

    >>> ds = TFRecordDataset("seaweedfs://filer:8888/shards/train-*.tfrecord",
    ...                      num_parallel_reads=4)                    # doctest: +SKIP
    >>> ds = ds.map(parse_example).batch(256).prefetch(tf.data.AUTOTUNE)  # doctest: +SKIP

    Returns a ``tf.data.Dataset`` of scalar ``tf.string`` records with the elements, order and
    ``element_spec`` of ``tf.data.TFRecordDataset`` over local copies of the same files.

    ``filenames``: a location, a list, a glob (expanded on the filer, sorted), a string tensor
    or a ``tf.data.Dataset`` of names (see :mod:`seaweed_data.tf.paths`).
    ``compression_type``: None or ``""``, ``"GZIP"``, ``"ZLIB"``. ``buffer_size`` is accepted
    for compatibility (the engine's readahead sizes the reads). ``num_parallel_reads``: files
    read at once, interleaved record by record as ``tf.data`` does. ``name``: the name of the
    final ``tf.data`` operation.

    Every record is CRC-checked; a corrupt or truncated record is an error (TensorFlow raises
    it as ``InvalidArgumentError`` or ``UnknownError``) naming the file and the record's byte
    offset. The first file (``num_parallel_reads`` files) of each iteration streams through
    ``Client.open``; the engine fetches the following ones whole, ``prefetch`` files ahead,
    in exactly the order they will be read (``prefetch=0`` streams every file).
    ``config`` gives the client options; the files are read by clients created on first use
    in the process that iterates, counting into ``seaweed_data.stats()``.
    """
    compression = _compression(compression_type)
    _check_options(buffer_size, num_parallel_reads, prefetch)
    options = (config or Config.from_env()).replace(prefetch_items=max(1, prefetch))
    parallel = num_parallel_reads
    streams = (os.cpu_count() or 1) if parallel == tf.data.AUTOTUNE else parallel or 1
    source = RecordSource(SourceClients(options), compression, streams, prefetch)
    dataset = source.dataset(names_dataset(filenames, source.clients.expand), parallel, name)
    return source.clients.owned_by(dataset)


class RecordSource:
    """The Python side of one ``TFRecordDataset``: announcing and reading its files."""

    def __init__(self, clients: SourceClients, compression: str, streams: int,
                 prefetch: int) -> None:
        self.clients = clients
        self.compression = compression
        self.prefetch = prefetch
        self.streams = streams
        self.reads = ShardReads(clients, streams=streams, prefetch=prefetch)

    def dataset(self, names: Any, parallel: int | None, name: str | None) -> Any:
        """The records of the files of ``names``, read as described in the module docstring."""
        numbered = names.scan(np.int64(0), as_is(_number))
        announced = numbered.map(as_is(self._announce))
        if self.prefetch > 0:
            announced = announced.prefetch(self.prefetch + self.streams)
        if parallel is None:
            # One map for all files, not one per file: tf.data parallelizes and autotunes
            # each map it sees, and per file that setup costs more than the cutting itself.
            windows = announced.flat_map(as_is(self._file_windows))
            return windows.map(_cut_records).unbatch(name=name)
        return announced.interleave(as_is(self._read_file), cycle_length=parallel,
                                    block_length=1, num_parallel_calls=parallel, name=name)

    def _announce(self, number: Any, name: Any) -> tuple[Any, Any]:
        announced = tf.numpy_function(self._announce_py, [number, name], tf.int64,
                                      stateful=True)
        return tf.reshape(announced, []), _with_reader_op(name)

    def _announce_py(self, number: np.int64, name: bytes) -> np.int64:
        self.reads.announce(int(number), name.decode())
        return number

    def _file_windows(self, number: Any, name: Any) -> Any:
        return tf.data.Dataset.from_generator(self.windows, args=(number, name),
                                              output_signature=WINDOWS)

    def _read_file(self, number: Any, name: Any) -> Any:
        return self._file_windows(number, name).map(_cut_records).unbatch()

    def windows(self, number: np.int64, name: bytes) -> Iterator[Window]:
        """The records of file ``number`` (``name``), checked, a window at a time."""
        location = name.decode()
        log.debug("TFRecordDataset: reading file %d, %s", number, location)
        if self.clients.config.reuse_large_allocations:
            reuse_large_allocations()
        with self.reads.open(int(number), location) as stream:
            if self.compression:
                yield from record_windows(iter_records(stream, path=location,
                                                       compression=self.compression))
                return

            def reread() -> IO[bytes]:
                stream.seek(0)
                return stream

            # A prefetched file is in memory: one read. A streamed one is read in pieces no
            # larger than its readahead's first window, which keeps growing. Windows stay
            # small enough for the heap to reuse their memory (see .allocator).
            if isinstance(stream, io.BytesIO):
                yield from frame_windows(stream, location, reread, read_size=MAX_READ)
                return
            yield from frame_windows(stream, location, reread, read_size=STREAM_READ)


def record_windows(records: Iterable[bytes], max_records: int = BATCH_RECORDS,
                   max_bytes: int = BATCH_BYTES) -> Iterator[Window]:
    """``records`` grouped into windows of at most ``max_records`` records, closed once
    they reach ``max_bytes``."""
    batch: list[bytes] = []
    size = 0
    for record in records:
        batch.append(record)
        size += len(record)
        if len(batch) >= max_records or size >= max_bytes:
            yield window_of(batch)
            batch, size = [], 0
    if batch:
        yield window_of(batch)


def _cut_records(data: Any, starts: Any, lengths: Any) -> Any:
    """The records of a window, cut out natively."""
    return tf.strings.substr(data, starts, lengths)


def _number(count: Any, name: Any) -> tuple[Any, tuple[Any, Any]]:
    return count + 1, (count, name)


def _with_reader_op(name: Any) -> Any:
    """``name``, made to depend on a ``TFRecordDataset`` op of it: the reader op that lets
    FILE auto-sharding shard the names. The op only creates a dataset; nothing iterates it,
    so the file is never opened by TensorFlow."""
    reader = tf.raw_ops.TFRecordDataset(filenames=name, compression_type="",
                                        buffer_size=tf.constant(0, tf.int64))
    with tf.control_dependencies([reader]):
        return tf.identity(name)


def _compression(compression_type: str | None) -> str:
    kind = "" if compression_type is None else compression_type
    if kind not in COMPRESSIONS:
        raise ValueError("compression_type must be None, '', 'GZIP' or 'ZLIB', got "
                         f"{compression_type!r}")
    return kind


def _check_options(buffer_size: int | None, num_parallel_reads: int | None,
                   prefetch: int) -> None:
    checks = (("buffer_size", buffer_size, 0), ("num_parallel_reads", num_parallel_reads, 1))
    for label, value, low in checks:
        if value is None or (label == "num_parallel_reads" and value == tf.data.AUTOTUNE):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{label} must be None or an int >= {low}, got {value!r}")
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"prefetch must be an int >= 0, got {prefetch!r}")
