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

Resuming: ``state_dict()`` holds the epoch, the order being yielded, how much of it was
yielded and the wrapped sampler's generator state after drawing it; ``load_state_dict()``
makes the next iteration yield exactly the rest of that order, and the epochs after it those
an uninterrupted run would have drawn. Under torchdata's ``StatefulDataLoader`` the loader
saves and restores this state itself (at every batch: the order is shared, never copied), and
does not skip on top of it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sized
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
        self._order: tuple[Any, ...] | None = None  # immutable: state dicts share it
        self._yielded = 0
        self._resuming = False  # a loaded state's order is still to be yielded
        self._rng: torch.Tensor | None = None  # the generator's state after drawing the order

    def __len__(self) -> int:
        if not isinstance(self.sampler, Sized):
            raise TypeError("the wrapped sampler has no length")
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        if self._resuming and self._order is not None:
            order, start = self._order, self._yielded
        else:
            order, start = tuple(_plain_order(self.sampler)), 0
            self._rng = _rng_state(self.sampler)
        self._order, self._yielded, self._resuming = order, start, False
        batched = bool(order) and isinstance(order[0], list)
        self.dataset.announce(list(order[start:]), self._next_order(), batched)
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
        return _plain_order(ahead)

    def state_dict(self) -> dict[str, Any]:
        """Where this epoch stands: resume yields exactly the remaining indices.

        The order is shared, not copied (StatefulDataLoader asks for the state at every
        batch). ``generator``, when the wrapped sampler has one, is its state after drawing
        this order, so the epochs after a resume are those of an uninterrupted run.
        """
        started = self._order is not None
        state: dict[str, Any] = {"epoch": self.epoch, "order": self._order or (),
                                 "yielded": self._yielded if started else 0}
        rng = self._rng if started else _rng_state(self.sampler)
        if rng is not None:
            state["generator"] = rng
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_epoch(int(state["epoch"]))
        generator = _generator(self.sampler)
        if state.get("generator") is not None and generator is not None:
            generator.set_state(state["generator"])
        order = tuple(_plain_order(state.get("order") or ()))
        self._order = order or None
        self._yielded = int(state["yielded"]) if order else 0
        self._rng = _rng_state(self.sampler)
        self._resuming = self._yielded < len(order)


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


def _generator(sampler: Any) -> torch.Generator | None:
    """The generator the sampler (or the sampler it batches) draws from, if its own."""
    generator = getattr(sampler, "generator", None)
    if isinstance(generator, torch.Generator):
        return generator
    inner = getattr(sampler, "sampler", None)
    return _generator(inner) if inner is not None else None


def _rng_state(sampler: Any) -> torch.Tensor | None:
    generator = _generator(sampler)
    return generator.get_state() if generator is not None else None


def _plain_order(order: Iterable[Any]) -> list[Any]:
    """``order`` (what a sampler yields) with plain ints for indices (a tensor's or NumPy's
    become ints). Plain ints are taken as they are: the common case, on the path to an
    epoch's first batch (a 10,000-index order: 0.6 ms instead of 1.6)."""
    items = list(order)
    if all(type(item) is int for item in items):
        return items
    return [_plain(item) for item in items]


def _plain(item: Any) -> Any:
    if isinstance(item, (list, tuple)):
        return [int(i) for i in item]
    return int(item)
