"""How a sampler in the main process tells DataLoader workers the order they will read in.

The sampler runs in the main process; the samples are read in the workers. When the sampler
starts an epoch, it *announces* the epoch's order (and the next epoch's, when it can compute
it) to the dataset. With ``num_workers=0`` the dataset uses it directly. With workers, the
announcement is a small file in a private directory whose name the dataset carries to its
workers (fork or spawn); every worker checks for a newer announcement when a batch arrives.

Which batches a worker reads follows from how DataLoader hands them out: batch ``k`` of an
epoch goes to worker ``k % num_workers`` (round-robin from worker 0, ``in_order=True``, the
default). A worker therefore takes the batches ``w, w + n, w + 2n, ...`` of the announced order.
``worker_share`` also takes the batch a worker was handed first, which fixes where its share
starts should the round robin start elsewhere (torchdata's ``StatefulDataLoader`` restored
mid-epoch continues it from the checkpointed run). The worker checks that the batches it
receives match this prediction; when they do not (a DataLoader that hands out batches
otherwise), it stops following hints and says so once in the log.
``tests/test_torch_folder.py`` fails the day DataLoader's distribution changes.

The directory holds only the latest announcement; it is removed when the dataset is garbage
collected or the interpreter exits (a crashed job leaves one small file behind).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

log = logging.getLogger(__name__)

Order = list[Any]
"""An epoch's order as a sampler yields it: indices, or batches (lists) of indices."""


@dataclass(frozen=True)
class Announcement:
    """One epoch's order as the sampler yields it, and the next epoch's if known."""

    seq: int
    order: Order
    next_order: Order | None
    batched: bool


def worker_share(order: Order, batched: bool, batch_size: int, worker: int, workers: int,
                 first: list[int] | None = None) -> list[list[int]]:
    """The batches worker ``worker`` of ``workers`` gets, in order (see the module docstring).

    ``first``, the batch the worker was handed first, says where its share starts when the
    round robin does not start at worker 0 for this order: torchdata's ``StatefulDataLoader``,
    restored mid-epoch, goes on with the worker after the one that yielded last.
    """
    if batched:
        batches = [list(b) for b in order]
    else:
        flat = [int(i) for i in order]
        batches = [flat[i:i + batch_size] for i in range(0, len(flat), batch_size)]
    start = worker
    if first is not None:
        head, first = batches[:workers], [int(i) for i in first]
        if first in head and (worker >= len(head) or head[worker] != first):
            start = head.index(first)
    return batches[start::workers]


class Channel:
    """The main process's announcements, readable by its DataLoader workers."""

    def __init__(self) -> None:
        self._token = uuid.uuid4().hex
        self._owner = os.getpid()
        self._seq = 0
        self._seen = 0
        self._seen_file: tuple[int, int, int] | None = None

    @property
    def directory(self) -> str:
        return os.path.join(tempfile.gettempdir(), f"seaweed_data-{os.getuid()}",
                            f"announce-{self._owner}-{self._token}")

    def publish(self, order: Order,
                next_order: Order | None, batched: bool) -> Announcement:
        """Make ``order`` the current announcement (main process)."""
        self._seq += 1
        announcement = Announcement(self._seq, order, next_order, batched)
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        if len(os.listdir(self.directory)) == 0:
            weakref.finalize(self, _remove, self.directory, self._owner)
        tmp = os.path.join(self.directory, f".tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, np.array([self._seq, int(batched)], dtype=np.int64))
            _save_order(f, order)
            _save_order(f, next_order)
        os.replace(tmp, os.path.join(self.directory, "current"))
        return announcement

    def poll(self) -> Announcement | None:
        """A newer announcement than the last one this process saw, if any (workers).

        Called for every batch the worker's current order did not predict: a file this
        process read already (every announcement is a new file, renamed into place) costs
        one ``stat``, not a read."""
        path = os.path.join(self.directory, "current")
        try:
            if _identity(os.stat(path)) == self._seen_file:
                return None
            with open(path, "rb") as f:
                self._seen_file = _identity(os.fstat(f.fileno()))
                seq, batched = (int(x) for x in np.load(f))
                if seq <= self._seen:
                    return None
                order = _load_order(f)
                next_order = _load_order(f)
        except (OSError, ValueError, EOFError):
            return None
        self._seen = seq
        assert order is not None
        return Announcement(seq, order, next_order, bool(batched))


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _remove(directory: str, owner: int) -> None:
    if os.getpid() == owner:  # never from a forked worker that inherited the finalizer
        shutil.rmtree(directory, ignore_errors=True)


def _save_order(f: BinaryIO, order: Order | None) -> None:
    if order is None:
        np.save(f, np.zeros(0, dtype=np.int64))
        np.save(f, np.zeros(0, dtype=np.int64))
        return
    if order and isinstance(order[0], (list, tuple)):
        lengths = np.array([len(b) for b in order], dtype=np.int64)
        flat = np.array([i for b in order for i in b], dtype=np.int64)
    else:
        lengths = np.array([-1], dtype=np.int64)
        flat = np.array(order, dtype=np.int64)
    np.save(f, lengths)
    np.save(f, flat)


def _load_order(f: BinaryIO) -> Order | None:
    lengths = np.load(f)
    flat = np.load(f)
    if len(lengths) == 0:
        return None
    values: list[int] = flat.tolist()
    if len(lengths) == 1 and lengths[0] == -1:
        return values
    out, position = [], 0
    for length in lengths:
        out.append(values[position:position + int(length)])
        position += int(length)
    return out
