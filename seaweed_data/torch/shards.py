"""``ShardDataset``: an IterableDataset over ``.pt`` and TFRecord shards stored on SeaweedFS."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Generator, Iterator, Sequence
from itertools import islice
from typing import Any, Literal

from torch.utils.data import IterableDataset, get_worker_info

from ..config import Config
from ..core.client import Client
from ..core.job_metrics import JobMetrics
from ..core.location import has_glob
from ..core.metrics import Counters
from ..core.records import COMPRESSIONS
from ..errors import CorruptDataError, NotFoundError
from . import shard_process
from .shard_formats import Report, load_pt, resolve_paths, shard_format, tfrecord_samples
from .shard_plan import (
    Slot,
    buffer_shuffled,
    epoch_order,
    equal_share,
    permuted,
    shard_rng,
    slot_share,
)
from .shard_process import Local, make_local, publish_epoch, read_epoch, track
from .shard_state import Progress, Resume, make_state, parse_state, starting_point

log = logging.getLogger(__name__)

SAMPLE_COUNTERS = ("samples_yielded", "samples_skipped", "shards_read", "shards_skipped")
"""Counters of a ShardDataset's ``stats()`` besides the client's."""


class ShardDataset(IterableDataset[Any]):
    """The samples of ``.pt``/``.pth`` and TFRecord shards, split over ranks and workers.

    >>> ds = ShardDataset("seaweedfs://filer:8888/data/train-*.tfrecord", shuffle=True,
    ...                   seed=0)                                      # doctest: +SKIP
    >>> loader = DataLoader(ds, batch_size=64, num_workers=4)        # doctest: +SKIP
    >>> for epoch in range(10):                                        # doctest: +SKIP
    ...     ds.set_epoch(epoch)
    ...     for batch in loader: ...

    **Samples.** A ``.pt`` shard is a ``torch.save``'d list or tuple (its items are the
    samples) or a dict of equal-length tensors (row ``i`` is ``{key: tensor[i]}``), loaded to
    CPU with ``weights_only`` (default True). A TFRecord shard (``.tfrecord``, ``.tfrecords``,
    ``.tfrec``; ``.gz``/``.zz`` or ``compression=`` for GZIP/ZLIB) yields each record's raw
    bytes, CRC-checked (parse them, e.g. ``tf.train.Example``, in a transform).

    **Splitting.** ``paths`` (locations or globs; a glob is expanded on the filer, sorted,
    at the first iteration of a process, or once for all by :meth:`shard_paths` in the main
    process before the DataLoader starts) is put in the epoch's order: as given, or
    shuffled by ``(seed, epoch)``. Rank ``r`` of ``W`` takes every ``W``-th shard of that
    order from position ``r``, and its DataLoader worker ``w`` of ``N`` every ``N``-th of
    those from ``w``. Each shard goes to exactly one reader, so each sample comes once per
    epoch; readers without a shard yield nothing (have at least ``W * N`` shards). Rank and
    world size come from ``torch.distributed`` when it is initialised (a worker started by
    spawn gets them from its parent, taken when the dataset is pickled for it); both are
    resolved when iteration starts, never in the constructor, which does no I/O.

    **Equal counts per rank** (``equal_per_rank=True``, for DDP lockstep): every rank yields
    exactly the smallest rank's total, by dropping the surplus from the ends of its workers'
    streams (spread so that the fullest workers give up samples first); which samples drop
    changes with the shuffle. It needs every shard's sample count: :meth:`count_samples`
    reads every shard once; call it before creating the DataLoader, or each reader counts.

    **Shuffling** (``shuffle=True``) is a pure function of ``(seed, epoch)``: the shard order,
    and within each shard a permutation (``.pt``: it is in memory anyway) or a buffer of
    ``shuffle_buffer`` records (TFRecord, as ``tf.data``'s ``shuffle``). Call
    :meth:`set_epoch` before each epoch; it reaches persistent workers too.

    **Prefetching.** Each reader announces its exact shard order to its own client
    (``Client.set_hints``), which keeps ``prefetch`` whole shards fetched ahead. The first
    TFRecord shard of a reader's pass is instead streamed through ``Client.open`` (sequential
    readahead): its records come out while the rest of it is still arriving; the next ones
    arrive whole while earlier ones are read. ``prefetch=0`` streams every TFRecord shard.

    **Resume.** :meth:`state_dict` holds the epoch and each reader's progress: the position
    in its shard list, the samples handed out from that shard and in the epoch.
    :meth:`load_state_dict` makes the next iteration of that epoch skip the finished shards
    unread and replay the current one (same shuffle) past the samples already handed out:
    exactly the remaining samples. A reader's progress lives in the process that iterates:
    iterating in-process (``num_workers=0``, on every rank) it is exact to the sample (after
    ``n`` batches of ``b``: ``n * b`` samples); with DataLoader workers, torchdata's
    ``StatefulDataLoader`` takes and restores each worker's state in that worker, with each
    batch, which keeps it exact; the plain DataLoader does not let the main process see it,
    so its state holds just the epoch and resuming restarts that epoch. Resuming needs the
    same shards, ``seed``, ``shuffle``, ``equal_per_rank``, world size and ``num_workers``.

    **Errors.** A corrupt TFRecord record raises :class:`~seaweed_data.CorruptDataError`
    naming the shard and the record's byte offset; a truncated or garbled ``.pt`` shard names
    the shard. ``on_error="skip"`` instead leaves out a record whose data fails its CRC
    (``samples_skipped``) or a shard, or its rest, that cannot be read (``shards_skipped``),
    logging a warning for each. Missing files and network errors always raise.

    **Stats.** :meth:`stats` in the main process sums this dataset's counters (its clients'
    ``bytes_fetched``, ``prefetch_used``, ... and :data:`SAMPLE_COUNTERS`) over the main
    process and every DataLoader worker (through :class:`~seaweed_data.core.job_metrics.
    JobMetrics`; a worker reports at least every second and when it finishes an epoch).

    ``client`` or ``config`` give the filer and options; every process builds its own client
    from them, with ``config.prefetch_items = prefetch``.
    """

    def __init__(self, paths: str | Sequence[str], shuffle: bool = False, seed: int = 0,
                 prefetch: int = 2, config: Config | None = None, *,
                 client: Client | None = None, shuffle_buffer: int = 1000,
                 equal_per_rank: bool = False, on_error: Literal["raise", "skip"] = "raise",
                 weights_only: bool = True, compression: str | None = None) -> None:
        _check_options(prefetch, shuffle_buffer, on_error, seed, compression)
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.prefetch = prefetch
        self.shuffle_buffer = shuffle_buffer
        self.equal_per_rank = bool(equal_per_rank)
        self.on_error = on_error
        self.weights_only = weights_only
        self.compression = compression
        self.epoch = 0
        self._config = config if config is not None else (client.config if client else None)
        self._filer, self._patterns = resolve_paths(paths, client, compression)
        self._shards: list[str] | None = None
        self._counts: list[int] | None = None
        self._progress: dict[str, Progress] = {}
        self._resume: Resume | None = None
        self._job: JobMetrics | None = None
        self._creator = os.getpid()
        self._parent_rank: tuple[int, int] | None = None
        self._local_state: Local | None = None
        track(self)

    def __repr__(self) -> str:
        return (f"ShardDataset({self._patterns!r}, shuffle={self.shuffle}, seed={self.seed}, "
                f"prefetch={self.prefetch}, filer={self._filer!r})")

    # -- epochs and shards -------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s shuffle from the next iteration on (also in persistent workers)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch
        if self._resume is not None and self._resume.epoch != epoch:
            log.info("set_epoch(%d): dropping the loaded state of epoch %d", epoch,
                     self._resume.epoch)
            self._resume = None
        self._publish_epoch()

    def shard_paths(self) -> list[str]:
        """The shards (globs expanded on the filer, sorted), in their unshuffled order."""
        return list(self._shard_list(self._local().client))

    def count_samples(self) -> list[int]:
        """The number of samples of each shard of :meth:`shard_paths` (read once, then kept;
        it travels to DataLoader workers created afterwards). With ``on_error="skip"``, the
        samples that iteration yields."""
        if self._counts is None:
            client = self._local().client
            shards = self._shard_list(client)
            log.info("counting the samples of %d shards (reads each once)", len(shards))
            self._counts = [self._count(client, path) for path in shards]
        return list(self._counts)

    # -- iteration ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        local = self._local()
        if self._job is not None:
            self._job.attach(local.counters)
        slot, epoch = self._slot(), self._current_epoch()
        shards = self._shard_list(local.client)
        order = epoch_order(len(shards), self.shuffle, self.seed, epoch)
        quota: int | None = None
        if self.equal_per_rank:
            quota, mine = equal_share(order, self.count_samples(), slot)
        else:
            mine = slot_share(order, slot)
        progress = self._start(slot, epoch, len(shards))
        paths = [shards[i] for i in mine]
        self._announce(local.client, paths, progress.shard)
        try:
            yield from self._read(local, paths, mine, progress, quota)
        finally:
            if self._job is not None:
                self._job.flush()

    def _read(self, local: Local, paths: list[str], mine: list[int], progress: Progress,
              quota: int | None) -> Iterator[Any]:
        first = progress.shard
        for position in range(first, len(paths)):
            streamed = self.prefetch == 0 or position == first
            shard = self._samples(local, paths[position], mine[position], progress.epoch,
                                  streamed)
            with contextlib.closing(shard):
                for sample in islice(shard, progress.sample, None):
                    if quota is not None and progress.yielded >= quota:
                        return
                    progress.sample += 1
                    progress.yielded += 1
                    local.counters.add("samples_yielded")
                    yield sample
            progress.shard, progress.sample = position + 1, 0
            local.counters.add("shards_read")

    def _samples(self, local: Local, path: str, index: int, epoch: int,
                 streamed: bool) -> Generator[Any, None, None]:
        """One shard's samples in this epoch's order."""
        rng = shard_rng(self.seed, epoch, index) if self.shuffle else None
        report = self._reporter(local.counters) if self.on_error == "skip" else None
        fmt = shard_format(path, self.compression)
        if fmt.kind == "pt":
            samples = self._pt_samples(local.client, path, report)
            yield from (permuted(samples, rng) if rng else samples)
            return
        records = self._records(local.client, path, fmt.compression, streamed, report)
        with contextlib.closing(records):
            yield from (buffer_shuffled(records, self.shuffle_buffer, rng) if rng else records)

    def _pt_samples(self, client: Client, path: str, report: Report | None) -> Sequence[Any]:
        data = client.read(path)
        try:
            return load_pt(data, path, weights_only=self.weights_only)
        except CorruptDataError as error:
            if report is None:
                raise
            report("shard", error)
            return ()

    def _records(self, client: Client, path: str, compression: str, streamed: bool,
                 report: Report | None) -> Generator[bytes, None, None]:
        if streamed:
            with client.open(path) as stream:
                yield from tfrecord_samples(stream, path, compression, report)
        else:
            yield from tfrecord_samples(io.BytesIO(client.read(path)), path, compression, report)

    def _count(self, client: Client, path: str) -> int:
        quiet = _quiet_report if self.on_error == "skip" else None
        fmt = shard_format(path, self.compression)
        if fmt.kind == "pt":
            return len(self._pt_samples(client, path, quiet))
        return sum(1 for _ in self._records(client, path, fmt.compression, True, quiet))

    @staticmethod
    def _reporter(counters: Counters) -> Report:
        def report(kind: Literal["sample", "shard"], error: CorruptDataError) -> None:
            counters.add("samples_skipped" if kind == "sample" else "shards_skipped")
            what = "a corrupt record" if kind == "sample" else "the rest of a shard"
            log.warning("on_error='skip': skipping %s: %s", what, error)
        return report

    def _announce(self, client: Client, paths: list[str], start: int) -> None:
        """Hint this reader's remaining shards, except a first TFRecord one (streamed)."""
        if self.prefetch == 0:
            return
        ahead = paths[start:]
        if ahead and shard_format(ahead[0], self.compression).kind == "tfrecord":
            ahead = ahead[1:]
        client.set_hints(ahead)

    # -- who am I ----------------------------------------------------------------------------

    def _slot(self) -> Slot:
        rank, world = shard_process.distributed_rank() or self._parent_rank or (0, 1)
        info = get_worker_info()
        if info is None:
            return Slot(rank, world)
        return Slot(rank, world, info.id, info.num_workers)

    def _current_epoch(self) -> int:
        """The epoch to read: in a worker, the main process's latest :meth:`set_epoch`."""
        if self._job is not None and not self._job.is_main:
            published = read_epoch(self._job)
            if published is not None:
                self.epoch = published
        return self.epoch

    def _publish_epoch(self) -> None:
        if self._job is not None and self._job.is_main:
            publish_epoch(self._job, self.epoch)

    def _local(self) -> Local:
        local = self._local_state
        if local is None or local.pid != os.getpid():  # first use here, or a forked child
            local = self._local_state = make_local(self._filer, self._config, self.prefetch)
        return local

    def _shard_list(self, client: Client) -> list[str]:
        if self._shards is None:
            found: list[str] = []
            for pattern in self._patterns:
                if not has_glob(pattern):
                    found.append(pattern)
                    continue
                matches = client.glob(pattern)
                if not matches:
                    raise NotFoundError(pattern, "no file matches this glob")
                found.extend(matches)
            for path in found:
                shard_format(path, self.compression)
            self._shards = found
        return self._shards

    # -- resume ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The epoch and the progress of the readers that iterated in this process (see the
        class docstring; the format is in :mod:`seaweed_data.torch.shard_state`)."""
        shards = None if self._shards is None else len(self._shards)
        return make_state(self._options(), self.epoch, shards, self._progress, self._resume)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next iteration yields exactly the rest of its
        epoch. ValueError if the state does not fit this dataset."""
        resume = parse_state(state, self._options())
        self.epoch, self._resume = resume.epoch, resume
        self._publish_epoch()

    def _options(self) -> dict[str, Any]:
        return {"seed": self.seed, "shuffle": self.shuffle,
                "equal_per_rank": self.equal_per_rank}

    def _start(self, slot: Slot, epoch: int, shards: int) -> Progress:
        """This reader's starting point: a loaded state's (once), else the epoch's start."""
        resume, self._resume = self._resume, None
        if resume is not None and resume.epoch != epoch:
            log.info("%r: the loaded state is of epoch %d, this iteration reads epoch %d; "
                     "starting it from the beginning", self, resume.epoch, epoch)
        progress = starting_point(resume, slot, epoch, shards)
        self._progress = {slot.key: progress}
        return progress

    # -- metrics and lifecycle ---------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters of this dataset: in the main process, summed over its DataLoader workers."""
        local = self._local()
        job = self._job
        values = job.collect() if job is not None and job.is_main else local.counters.snapshot()
        return {**dict.fromkeys(SAMPLE_COUNTERS, 0), **values}

    def _ensure_job(self) -> None:
        """In the creating process, before workers exist: the job they report to."""
        if self._job is None and os.getpid() == self._creator:
            self._job = JobMetrics.create(self._local().counters)

    def close(self) -> None:
        """Close this process's client and, in the main process, the metrics job (its last
        totals stay in :meth:`stats`). The dataset can still be iterated (with a new client),
        but then workers' counters no longer reach :meth:`stats`."""
        self._close_client()
        if self._job is not None and self._job.is_main:
            self._job.close()

    def _close_client(self) -> None:
        local, self._local_state = self._local_state, None
        if local is not None and local.pid == os.getpid():
            local.client.close()

    def __enter__(self) -> ShardDataset:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if os.getpid() == self._creator:  # pickled for spawned workers (or a copy)
            self._ensure_job()
            state["_job"] = self._job
            state["_parent_rank"] = shard_process.distributed_rank() or self._parent_rank
        state["_local_state"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        track(self)


def _check_options(prefetch: int, shuffle_buffer: int, on_error: str, seed: int,
                   compression: str | None) -> None:
    for name, value, low in (("prefetch", prefetch, 0), ("shuffle_buffer", shuffle_buffer, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if compression is not None and (not isinstance(compression, str)
                                    or compression.upper() not in COMPRESSIONS):
        raise ValueError(
            f"compression must be None, '', 'GZIP' or 'ZLIB', got {compression!r}")


def _quiet_report(kind: Literal["sample", "shard"], error: CorruptDataError) -> None:
    log.debug("counting samples: a %s would be skipped: %s", kind, error)
