"""What a ShardDataset needs from the process it runs in: its rank, its own client, and the
epoch its main process set.

A dataset travels to DataLoader workers by fork or pickle; a client, a lock or a loop never
does. Each process builds its own :class:`Local` (pid check), and the main process publishes
:meth:`~seaweed_data.torch.ShardDataset.set_epoch` into the job directory that its workers
share (:class:`~seaweed_data.core.job_metrics.JobMetrics`), where persistent workers, made
before the call, read it at the start of each epoch.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import weakref
from dataclasses import dataclass
from typing import Protocol

import torch

from ..config import Config
from ..core.client import Client
from ..core.job_metrics import JobMetrics
from ..core.metrics import PROCESS, Counters

log = logging.getLogger(__name__)

EPOCH_FILE = "shard-dataset-epoch"


def distributed_rank() -> tuple[int, int] | None:
    """(rank, world size) of the initialised default torch.distributed group, else None."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


@dataclass
class Local:
    """What one process owns: never pickled, rebuilt after fork."""

    pid: int
    counters: Counters
    client: Client


def make_local(filer: str, config: Config | None, prefetch: int) -> Local:
    """This process's counters and client (``prefetch`` whole files ahead); no I/O."""
    counters = Counters(parent=PROCESS)
    options = (config or Config.from_env()).replace(prefetch_items=max(1, prefetch))
    client = Client(filer, options)
    client.counters = Counters(parent=counters)  # before its first call: it counts for us
    return Local(os.getpid(), counters, client)


def read_epoch(job: JobMetrics) -> int | None:
    """The epoch the main process published, if any."""
    try:
        with open(os.path.join(job.path, EPOCH_FILE), encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None  # none published since the worker was made: its own copy is current


def publish_epoch(job: JobMetrics, epoch: int) -> None:
    """Atomically record ``epoch`` for the workers (main process only)."""
    temp = os.path.join(job.path, f".{EPOCH_FILE}-{os.getpid()}.tmp")
    try:
        with open(temp, "w", encoding="ascii") as f:
            f.write(str(epoch))
        os.replace(temp, os.path.join(job.path, EPOCH_FILE))
    except OSError as exc:
        log.warning("cannot publish epoch %d to DataLoader workers: %s", epoch, exc)


class Tracked(Protocol):
    """A dataset with per-process resources (the hooks below call these)."""

    def _ensure_job(self) -> None: ...

    def _close_client(self) -> None: ...


_LIVE: weakref.WeakSet[Tracked] = weakref.WeakSet()


def track(dataset: Tracked) -> None:
    """Let the fork and exit hooks of this process see ``dataset`` while it lives."""
    _LIVE.add(dataset)


def _before_fork() -> None:
    """Give every dataset of this process its job before a fork can make workers of it."""
    for dataset in list(_LIVE):
        try:
            dataset._ensure_job()
        except Exception as exc:  # metrics must never break a fork
            log.debug("no job metrics for %r: %s", dataset, exc)


def _close_at_exit() -> None:
    """Close the clients of live datasets while the loop thread still runs: a client closed
    later, by the garbage collector during interpreter finalization, could wait forever."""
    for dataset in list(_LIVE):
        with contextlib.suppress(Exception):
            dataset._close_client()


os.register_at_fork(before=_before_fork)
atexit.register(_close_at_exit)
