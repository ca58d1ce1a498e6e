"""``PrefetchSampler``: any sampler's exact order becomes the prefetch hints of its readers.

How it works. ``PrefetchSampler(sampler_or_batch_sampler, dataset)`` runs in the main
process, where DataLoader iterates it. When an epoch starts it materialises the wrapped
sampler's whole order for that epoch, then *announces* it to the dataset (see
:mod:`seaweed_data.torch.announce`): with ``num_workers=0`` the dataset's own client gets the
order as hints; with workers, each worker works out the batches DataLoader will hand it (batch
``k`` goes to worker ``k % num_workers``) and hints exactly those, in order, to its own client.
Each process thus prefetches precisely what it will read next, and its ``eviction="future"``
memory tier knows when each cached sample is needed again.

When the wrapped sampler is a pure function of (seed, epoch) — a ``DistributedSampler``, or a
``RandomSampler`` / ``SubsetRandomSampler`` with its own seeded ``generator`` — the next
epoch's order is computed ahead (on a copy of the sampler), so prefetching crosses the epoch
boundary and eviction plans for it. ``set_epoch`` passes through.

Resuming: ``state_dict()`` holds the epoch, the order being yielded and how much of it was
yielded; ``load_state_dict()`` makes the next iteration yield exactly the rest of that order.
Under torchdata's ``StatefulDataLoader`` the loader saves and restores this state itself.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sized
from typing import Any, Protocol

import torch.utils.data
from torch.utils.data import BatchSampler, DistributedSampler

from .announce import Order


class Announces(Protocol):
    def announce(self, order: Order,
                 next_order: Order | None, batched: bool) -> None: ...


class PrefetchSampler(torch.utils.data.Sampler[Any]):
    """Wraps a sampler (``sampler=``) or batch sampler (``batch_sampler=``) of a DataLoader."""

    def __init__(self, sampler: Any, dataset: Announces) -> None:
        self.sampler = sampler
        self.dataset = dataset
        self.epoch = 0
        self._order: list[Any] | None = None
        self._yielded = 0
        self._resume: dict[str, Any] | None = None

    def __len__(self) -> int:
        if not isinstance(self.sampler, Sized):
            raise TypeError("the wrapped sampler has no length")
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        if self._resume is not None:
            order, start = self._resume["order"], int(self._resume["yielded"])
            self._resume = None
        else:
            order, start = [_plain(x) for x in self.sampler], 0
        self._order, self._yielded = order, start
        batched = bool(order) and isinstance(order[0], list)
        self.dataset.announce(order[start:], self._next_order(), batched)
        for item in order[start:]:
            self._yielded += 1
            yield item

    def _next_order(self) -> list[Any] | None:
        """The next epoch's order, if the sampler is a pure function of (seed, epoch)."""
        if not deterministic(self.sampler):
            return None
        # Copy the sampler's state (generator, epoch), not the dataset it points to.
        shared = {id(obj): obj for obj in _datasets(self.sampler)}
        ahead = copy.deepcopy(self.sampler, memo=shared)
        if hasattr(ahead, "set_epoch"):
            ahead.set_epoch(self.epoch + 1)
        return [_plain(x) for x in ahead]

    def state_dict(self) -> dict[str, Any]:
        """Where this epoch stands: resume yields exactly the remaining indices."""
        return {"epoch": self.epoch, "order": list(self._order or []),
                "yielded": self._yielded if self._order is not None else 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_epoch(int(state["epoch"]))
        if state.get("order") and int(state["yielded"]) < len(state["order"]):
            self._resume = {"order": list(state["order"]), "yielded": int(state["yielded"])}


def deterministic(sampler: Any) -> bool:
    """Whether iterating a copy of ``sampler`` gives exactly its next order."""
    if isinstance(sampler, BatchSampler):
        return deterministic(sampler.sampler)
    if isinstance(sampler, DistributedSampler):
        return True
    if isinstance(sampler, torch.utils.data.SequentialSampler):
        return True
    return getattr(sampler, "generator", None) is not None


def _datasets(sampler: Any) -> list[Any]:
    """Objects a sampler refers to that must be shared, not copied (its data source)."""
    found = [getattr(sampler, name) for name in ("data_source", "dataset")
             if getattr(sampler, name, None) is not None]
    inner = getattr(sampler, "sampler", None)
    return found + (_datasets(inner) if inner is not None else [])


def _plain(item: Any) -> Any:
    if isinstance(item, (list, tuple)):
        return [int(i) for i in item]
    return int(item)
