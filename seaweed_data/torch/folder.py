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
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch.utils.data
from PIL import Image

from ..config import Config
from ..core.client import Client
from ..core.job_metrics import JobMetrics
from ..core.location import parse_location
from ..core.metrics import PROCESS, Counters
from .announce import Announcement, Channel, Order, worker_share
from .listing import list_image_folder

log = logging.getLogger(__name__)

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
    """

    def __init__(self, root: str, transform: Callable[[Any], Any] | None = None,
                 target_transform: Callable[[int], Any] | None = None,
                 loader: Callable[[bytes], Any] | None = None, prefetch: int = 8,
                 config: Config | None = None,
                 is_valid_file: Callable[[str], bool] | None = None,
                 allow_empty: bool = False, *, client: Client | None = None) -> None:
        location = parse_location(root)
        self.root = location.path
        self.filer = location.filer
        self.transform = transform
        self.target_transform = target_transform
        self.loader = loader or pil_loader
        self.prefetch = prefetch
        self.config = (config or Config.from_env()).replace(prefetch_items=max(1, prefetch))
        self._client = client
        self._client_pid = os.getpid() if client is not None else 0
        self._channel = Channel()
        self._following = True
        self._predicted: list[list[int]] = []
        self._epochs_seen = 0
        self._pending: Announcement | None = None
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
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"], state["_client_pid"] = None, 0  # each process opens its own
        return state

    # -- samples -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, int]]:
        """A whole batch, fetched concurrently."""
        indices = [int(i) for i in indices]
        self._follow(indices)
        datas = self.client.read_entries([self.entries[i] for i in indices])
        return [self._sample(i, data) for i, data in zip(indices, datas, strict=True)]

    def _sample(self, index: int, data: bytes) -> tuple[Any, int]:
        try:
            sample = self.loader(data)
        except Exception as exc:
            raise type(exc)(f"cannot load {self.entries[index].path!r}: {exc}") from exc
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

    def _follow(self, indices: list[int]) -> None:
        info = torch.utils.data.get_worker_info()
        if info is None:
            if self._pending is not None:
                self._apply(self._pending, batch_size=0)
                self._pending = None
            return
        if not self._following:
            return
        announcement = self._channel.poll()
        if announcement is not None:
            self._apply(announcement, batch_size=len(indices), worker=info.id,
                        workers=info.num_workers, first=indices)
        elif self._predicted and self._predicted[0] != indices:
            self._stop_following(indices)
        if self._predicted:
            self._predicted.pop(0)

    def _apply(self, announcement: Announcement, batch_size: int, worker: int = 0,
               workers: int = 1, first: list[int] | None = None) -> None:
        if batch_size == 0:  # this process reads everything, in order
            mine = _flatten(announcement.order)
            upcoming = _flatten(announcement.next_order or [])
            self._predicted = []
        else:
            batches = worker_share(announcement.order, announcement.batched, batch_size,
                                   worker, workers, first)
            mine, self._predicted = _flatten(batches), batches
            upcoming = _flatten(worker_share(announcement.next_order or [],
                                             announcement.batched, batch_size, worker, workers))
        paths = [self.entries[i].path for i in mine]
        known = {e.path: e for e in (self.entries[i] for i in {*mine, *upcoming})}
        # A worker fetches across the epoch boundary only once it has shown it outlives an
        # epoch (persistent_workers): otherwise it would prefetch for a successor process.
        self._epochs_seen += 1
        cross = batch_size == 0 or self._epochs_seen > 1
        self.client.set_hints(paths, [self.entries[i].path for i in upcoming], known,
                              prefetch_next=cross)

    def _stop_following(self, indices: list[int]) -> None:
        log.warning("DataLoader handed this worker batch %s, not the one predicted from the "
                    "sampler's order; prefetch hints are off for this worker", indices[:4])
        self._following = False
        self._predicted = []
        self.client.set_hints([])

    # -- stats ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters of this process plus those its DataLoader workers reported."""
        return self._jobs.collect() if self._jobs.is_main else self.client.stats()

    def close(self) -> None:
        if self._client is not None and self._client_pid == os.getpid():
            self._client.close()
            self._client = None
        if self._jobs.is_main:
            self._jobs.close()


def _has_image_extension(path: str) -> bool:
    return path.lower().endswith(IMG_EXTENSIONS)


def _flatten(order: Order) -> list[int]:
    if order and isinstance(order[0], (list, tuple)):
        return [int(i) for batch in order for i in batch]
    return [int(i) for i in order]


__all__ = ["IMG_EXTENSIONS", "SeaweedImageFolder", "pil_loader"]
