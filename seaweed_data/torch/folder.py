"""``SeaweedImageFolder``: torchvision's ImageFolder, read straight from SeaweedFS.

Same semantics as ``torchvision.datasets.ImageFolder`` without depending on torchvision:
class folders sorted, ``classes``, ``class_to_idx``, ``samples``, ``targets``, ``imgs``, the
same image extensions (case-insensitive), the same order. The folder is listed once, in the
constructor as torchvision does (class folders concurrently, a progress bar when it takes
long); the listing carries every file's chunk list, travels with the dataset to DataLoader
workers and serves every epoch, so reading a sample costs no metadata request.

``__getitems__`` fetches a whole batch concurrently. With a :class:`PrefetchSampler` each
process prefetches exactly the samples it will read next; without one, a sequential traversal
(``shuffle=False``) is detected and read ahead.

Bad samples raise an error naming the file (``on_error="raise"``, the default), or, with
``on_error="skip"``, are left out of their batch, logged and counted (see the class).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, overload

import torch.utils.data
from PIL import Image

from ..config import Config
from ..core.cache.disk_layout import DISK_KEY_BYTES
from ..core.client import Client
from ..core.entry import Entry
from ..core.items import disk_keys
from ..core.job_metrics import JobMetrics
from ..core.location import parse_location
from ..core.metrics import PROCESS, Counters
from ..errors import ConfigError, CorruptDataError, NotFoundError
from .announce import Announcement, Channel, Order, worker_share
from .listing import list_image_folder
from .worker_heap import freeze_inherited_heap

log = logging.getLogger(__name__)

SKIPPABLE_READ_ERRORS = (NotFoundError, CorruptDataError)
"""Read errors that ``on_error="skip"`` skips: the file is gone (deleted since the listing)
or its data is damaged. Network, permission and server errors always raise: they say
nothing about one sample, and skipping them would empty an epoch during an outage."""

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def pil_loader(data: bytes) -> Image.Image:
    """Decode image bytes into an RGB Pillow image (torchvision's default, from bytes)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


class SeaweedImageFolder(torch.utils.data.Dataset[tuple[Any, int]]):
    """An image folder (``root/<class>/**/<image>``) on SeaweedFS.

    ``root`` is a location: ``seaweedfs://host:port/path``, a filer URL, or a bare path on
    ``SEAWEED_FILER``. ``loader`` receives the file's bytes (default: Pillow, RGB).
    ``prefetch`` is how many samples each process keeps fetched ahead of it.

    **Bad samples.** A file that cannot be read (deleted since the listing, damaged) or that
    ``loader`` cannot decode raises an error naming its path. ``on_error="skip"`` instead
    leaves such a sample out of the batch that asked for it: ``__getitems__`` (what DataLoader
    calls whenever it batches: ``batch_size`` or ``batch_sampler`` set) returns only the good
    samples, so that batch comes out shorter; every skip is logged as a warning naming the
    file and counted as ``samples_skipped`` in :meth:`stats` (workers' skips included).
    Errors of the network, of permissions or of the server, and errors of ``transform`` or
    ``target_transform``, always raise. A batch whose every sample is bad comes out empty,
    which ``default_collate`` cannot collate: where that can happen (``batch_size=1``), give
    DataLoader a ``collate_fn`` that accepts an empty list. ``ds[i]`` (``__getitem__``)
    always raises for a bad sample: a map-style dataset cannot return nothing for an index.

    **In DataLoader workers** the dataset's first read freezes the heap the worker inherited
    (``gc.freeze()``, see :mod:`seaweed_data.torch.worker_heap`): the garbage collector's full
    collections skip it instead of stalling the worker ~0.1 s every few epochs.
    """

    def __init__(self, root: str, transform: Callable[[Any], Any] | None = None,
                 target_transform: Callable[[int], Any] | None = None,
                 loader: Callable[[bytes], Any] | None = None, prefetch: int = 8,
                 config: Config | None = None,
                 is_valid_file: Callable[[str], bool] | None = None,
                 allow_empty: bool = False, *, client: Client | None = None,
                 on_error: Literal["raise", "skip"] = "raise") -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        location = parse_location(root)
        self.root = location.path
        self.filer = location.filer
        self.transform = transform
        self.target_transform = target_transform
        self.loader = loader or pil_loader
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ConfigError(f"prefetch must be an integer >= 0, got {prefetch!r}")
        self.prefetch = prefetch
        self.config = (config or Config.from_env()).replace(prefetch_items=max(1, prefetch))
        self._client = client
        self._client_pid = os.getpid() if client is not None else 0
        self._channel = Channel()
        self._following = True
        self._predicted: list[list[int]] = []
        self._epochs_seen = 0
        self._by_path: dict[str, Entry] | None = None
        self._pending: Announcement | None = None
        self._untold: tuple[list[int], bool] | None = None  # hints to tell
        self._counters = Counters(parent=PROCESS)  # this dataset's reads, in this process
        self._jobs = JobMetrics.create(self._counters)  # workers report theirs here
        check = is_valid_file or _has_image_extension
        try:
            self.classes, self.class_to_idx, self.entries, targets = list_image_folder(
                self.client, self.root, check, allow_empty)
        except BaseException:
            self.close()  # no client, thread or metrics directory left behind
            raise
        self.samples = [(e.path, t) for e, t in zip(self.entries, targets, strict=True)]
        self._disk_keys = disk_keys(self.entries) if self.config.disk_cache_dir else None
        self.targets = targets
        self.imgs = self.samples

    # -- processes -----------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """This process's client (created on first use in each process)."""
        if self._client is None:
            self._client = Client(self.filer, self.config, counters=self._counters)
        if self._client_pid != os.getpid():  # new process; a forked client rebuilds itself
            self._client_pid = os.getpid()
            if torch.utils.data.get_worker_info() is not None:
                self._jobs.attach(self._counters)
                freeze_inherited_heap()
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"], state["_client_pid"] = None, 0  # each process opens its own
        state["_by_path"] = state["_untold"] = None
        return state

    # -- samples -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        """Sample ``index``; a bad one raises whatever ``on_error`` says (see the class)."""
        index = int(index)
        self._follow([index])
        [data] = self.client.read_entries([self.entries[index]])
        return self._finish(index, self._load(index, data))

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, int]]:
        """A whole batch, fetched concurrently (without its bad samples under ``"skip"``)."""
        indices = [int(i) for i in indices]
        last = self._follow(indices)
        misses = self._counters.get("cache_misses")
        try:
            samples = self._batch(indices)
        finally:
            self._tell_untold(missed=self._counters.get("cache_misses") > misses)
        if last:  # this worker's share of the epoch is read: let the node's workers see it
            self.client.flush()
        return samples

    def _batch(self, indices: list[int]) -> list[tuple[Any, int]]:
        if self.on_error == "skip":
            return self._skipping(indices)
        datas = self._from_disk(indices)
        if len(datas) < len(indices):
            datas += self.client.read_entries([self.entries[i] for i in indices[len(datas):]])
        return [self._finish(i, self._load(i, data))
                for i, data in zip(indices, datas, strict=True)]

    def _from_disk(self, indices: list[int]) -> list[bytes]:
        """The batch's leading files that a fresh worker finds on the disk tier, read by
        the keys the listing process made (:func:`~seaweed_data.core.items.disk_keys`),
        without touching the inherited entries."""
        keys = self._disk_keys
        if keys is None:
            return []
        size = DISK_KEY_BYTES
        return self.client.read_cached([keys[i * size:(i + 1) * size] for i in indices])

    def _skipping(self, indices: list[int]) -> list[tuple[Any, int]]:
        try:
            datas: list[bytes | None] = list(
                self.client.read_entries([self.entries[i] for i in indices]))
        except SKIPPABLE_READ_ERRORS:  # find the bad ones: one read each (the rest is cached)
            datas = [self._read_or_skip(i) for i in indices]
        samples = []
        for index, data in zip(indices, datas, strict=True):
            if data is None:
                continue
            try:
                sample = self._load(index, data)
            except Exception as exc:
                self._skip(index, exc)
                continue
            samples.append(self._finish(index, sample))
        return samples

    def _read_or_skip(self, index: int) -> bytes | None:
        try:
            [data] = self.client.read_entries([self.entries[index]])
        except SKIPPABLE_READ_ERRORS as exc:
            self._skip(index, exc)
            return None
        return data

    def _skip(self, index: int, error: Exception) -> None:
        self._counters.add("samples_skipped")
        log.warning("on_error='skip': skipping sample %d (%s): %s", index,
                    self.entries[index].path, error)

    def _load(self, index: int, data: bytes) -> Any:
        try:
            return self.loader(data)
        except Exception as exc:
            path = self.entries[index].path
            message = f"cannot load {path!r} ({len(data)} bytes): {type(exc).__name__}: {exc}"
            try:
                error = type(exc)(message)
            except Exception:  # an exception type that does not take one message
                error = CorruptDataError(message, path=path)
            raise error from exc

    def _finish(self, index: int, sample: Any) -> tuple[Any, int]:
        target = self.targets[index]
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target

    # -- hints ---------------------------------------------------------------------------------

    def announce(self, order: Order,
                 next_order: Order | None, batched: bool) -> None:
        """Called by :class:`PrefetchSampler` in the main process when an epoch starts."""
        # Workers pick it up from the channel; this process only if it reads itself
        # (num_workers=0), at its first read.
        self._pending = self._channel.publish(order, next_order, batched)
        self._entries_by_path()  # made here, forked workers of later epochs inherit it

    def _follow(self, indices: list[int]) -> bool:
        """Take up a new announcement; whether ``indices`` is this worker's last batch of
        the epoch."""
        info = torch.utils.data.get_worker_info()
        if info is None:
            if self._pending is not None:
                self._apply(self._pending, batch_size=0)
                self._pending = None
            return False
        if not self._following:
            return False
        # The batch predicted from this epoch's order needs no look for a new announcement
        # (a file stat per batch): a new epoch shows as a batch the order did not predict.
        expected = bool(self._predicted) and self._predicted[0] == indices
        announcement = None if expected else self._channel.poll()
        if announcement is not None:
            self._apply(announcement, batch_size=len(indices), worker=info.id,
                        workers=info.num_workers, first=indices)
        elif self._predicted and self._predicted[0] != indices:
            self._stop_following(indices)
        if not self._predicted:
            return False
        self._predicted.pop(0)
        return not self._predicted

    def _apply(self, announcement: Announcement, batch_size: int, worker: int = 0,
               workers: int = 1, first: list[int] | None = None) -> None:
        # A worker fetches across the epoch boundary only once it has shown it outlives an
        # epoch (persistent_workers): otherwise it would prefetch for a successor process.
        self._epochs_seen += 1
        cross = batch_size == 0 or self._epochs_seen > 1
        if batch_size == 0:  # this process reads everything, in order
            self._predicted = []
            self._tell(_flatten(announcement.order),
                       _flatten(announcement.next_order or []), cross)
            return
        batches = worker_share(announcement.order, announcement.batched, batch_size,
                               worker, workers, first)
        self._predicted = batches
        # Nor is the next epoch's order told in a worker's first epoch: it only steers the
        # eviction of a memory tier that may not outlive this epoch (telling it cost a
        # fresh worker ~13 ms per 5,000 samples).
        upcoming = _flatten(worker_share(announcement.next_order or [], announcement.batched,
                                         batch_size, worker, workers)) if cross else []
        self._untold = (upcoming, cross)  # after the first batch (see _tell_untold)

    def _tell_untold(self, missed: bool) -> None:
        """Tell a new epoch's hints after its first batch that missed the cache (before
        the first batch, they would only hold it up); the rest of this worker's share is
        what is left to read, with the next epoch's share when the worker outlives epochs.

        While every batch comes from the cache (a warm epoch: the disk tier, or the memory
        of a persistent worker), the hints would serve nothing: prefetching finds it all
        cached, and a disk hit is not copied into memory, whose eviction they plan. Telling
        them, and reporting the hits they then call for, cost a fresh worker's loop thread
        ~6 ms per 5,000 samples (``benchmarks/worker_reads.py``), taken from the other
        workers on a busy node."""
        if self._untold is None or not missed:
            return
        upcoming, cross = self._untold
        self._untold = None
        self._tell(_flatten(self._predicted), upcoming, cross)

    def _tell(self, mine: list[int], upcoming: list[int], cross: bool) -> None:
        """Give the client the order of this process's reads: the paths are looked up and
        the hints applied on the loop thread (~5 ms per 5,000 samples the reading thread
        would otherwise spend before handing over its batch)."""
        self.client.set_hints(PathsOf(self.entries, mine), PathsOf(self.entries, upcoming),
                              self._entries_by_path(), prefetch_next=cross, background=True)

    def _entries_by_path(self) -> dict[str, Entry]:
        """The listing's entries by path, made once per process (not pickled)."""
        if self._by_path is None:
            self._by_path = {e.path: e for e in self.entries}
        return self._by_path

    def _stop_following(self, indices: list[int]) -> None:
        log.warning("DataLoader handed this worker batch %s, not the one predicted from the "
                    "sampler's order; prefetch hints are off for this worker", indices[:4])
        self._following = False
        self._predicted = []
        self._untold = None
        self.client.set_hints([])

    # -- stats ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters of this process plus those its DataLoader workers reported, with
        ``samples_skipped`` (see the class)."""
        if self._jobs.is_main:
            if self._client is not None and self._client_pid == os.getpid():
                self._client.settle()  # this process's own reads are counted
            return {"samples_skipped": 0, **self._jobs.collect()}
        return {**self.client.stats(), "samples_skipped": self._counters.get("samples_skipped")}

    def close(self) -> None:
        if self._client is not None and self._client_pid == os.getpid():
            self._client.close()
            self._client = None
        if self._jobs.is_main:
            self._jobs.close()


class PathsOf(Sequence[str]):
    """The paths of ``entries[i]`` for ``i`` in ``indices``, looked up when read."""

    def __init__(self, entries: Sequence[Entry], indices: Sequence[int]) -> None:
        self._entries = entries
        self._indices = indices

    def __len__(self) -> int:
        return len(self._indices)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self._entries[i].path for i in self._indices[index]]
        return self._entries[self._indices[index]].path

    def __iter__(self) -> Iterator[str]:
        entries = self._entries
        return (entries[i].path for i in self._indices)


def _has_image_extension(path: str) -> bool:
    return path.lower().endswith(IMG_EXTENSIONS)


def _flatten(order: Order) -> list[int]:
    if order and isinstance(order[0], (list, tuple)):
        return [int(i) for batch in order for i in batch]
    return [int(i) for i in order]


__all__ = ["IMG_EXTENSIONS", "SeaweedImageFolder", "pil_loader"]
