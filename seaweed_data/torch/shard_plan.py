"""Who reads which shard in what order: pure functions of (seed, epoch, rank, worker).

Nothing here does I/O or depends on the process it runs in, so every rank and DataLoader
worker computes the same plan independently and they agree without talking to each other.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Slot:
    """One reader of an epoch: a DataLoader worker of a torch.distributed rank."""

    rank: int = 0
    world: int = 1
    worker: int = 0
    workers: int = 1

    @property
    def key(self) -> str:
        """``"rank/world/worker/workers"``: names this reader's progress in a state dict."""
        return f"{self.rank}/{self.world}/{self.worker}/{self.workers}"

    @property
    def layout(self) -> tuple[int, int]:
        """(world size, workers per rank): resuming needs the same layout."""
        return self.world, self.workers


def layout_of(key: str) -> tuple[int, int]:
    """The (world size, workers per rank) of a progress key; ValueError if it is not one."""
    parts = key.split("/")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a reader key (rank/world/worker/workers): {key!r}")
    return int(parts[1]), int(parts[3])


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from ``parts`` (their reprs), the same in every process and run."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def epoch_order(count: int, shuffle: bool, seed: int, epoch: int) -> list[int]:
    """The order of the shards (indices into the sorted list) in ``epoch``."""
    order = list(range(count))
    if shuffle:
        random.Random(derive_seed("shards", seed, epoch)).shuffle(order)
    return order


def rank_share(order: Sequence[int], rank: int, world: int) -> list[int]:
    """The shards of one rank: every ``world``-th of the epoch's order."""
    return list(order[rank::world])


def slot_share(order: Sequence[int], slot: Slot) -> list[int]:
    """The shards of one reader, in the order it reads them: its rank's share, dealt round
    robin over the rank's workers. Every shard of ``order`` goes to exactly one slot."""
    return rank_share(order, slot.rank, slot.world)[slot.worker::slot.workers]


def water_fill(totals: Sequence[int], target: int) -> list[int]:
    """Quotas ``q[i] <= totals[i]`` summing to ``target`` (at most ``sum(totals)``), as even as
    the totals allow: the largest totals give up samples first."""
    if not 0 <= target <= sum(totals):
        raise ValueError(f"cannot take {target} of {sum(totals)} samples")
    low, high = 0, max(totals, default=0)
    while low < high:  # the highest level whose capped sum stays within the target
        level = (low + high + 1) // 2
        if sum(min(t, level) for t in totals) <= target:
            low = level
        else:
            high = level - 1
    quotas = [min(t, low) for t in totals]
    extra = target - sum(quotas)
    for i, total in enumerate(totals):
        if extra and total > low:
            quotas[i] += 1
            extra -= 1
    return quotas


def equal_share(order: Sequence[int], counts: Sequence[int],
                slot: Slot) -> tuple[int, list[int]]:
    """For ``equal_per_rank``: this slot's sample quota and the shards it needs for it.

    Every rank yields ``min`` over the ranks of their sample totals; a rank's surplus is
    dropped from the tails of its workers' streams (:func:`water_fill` over its workers).
    """
    totals = [sum(counts[i] for i in rank_share(order, r, slot.world))
              for r in range(slot.world)]
    target = min(totals, default=0)
    mine = rank_share(order, slot.rank, slot.world)
    lists = [mine[w::slot.workers] for w in range(slot.workers)]
    quotas = water_fill([sum(counts[i] for i in shards) for shards in lists], target)
    quota, needed, total = quotas[slot.worker], [], 0
    for index in lists[slot.worker]:
        if total >= quota:
            break
        needed.append(index)
        total += counts[index]
    return quota, needed


def shard_rng(seed: int, epoch: int, shard: int) -> random.Random:
    """The generator of the within-shard shuffle of shard ``shard`` in ``epoch``."""
    return random.Random(derive_seed("samples", seed, epoch, shard))


def permuted(items: Sequence[T], rng: random.Random) -> Iterator[T]:
    """``items`` in a random order (a whole shard already in memory)."""
    indices = list(range(len(items)))
    rng.shuffle(indices)
    for i in indices:
        yield items[i]


def buffer_shuffled(items: Iterable[T], size: int, rng: random.Random) -> Iterator[T]:
    """A streaming shuffle through a buffer of ``size`` items (tf.data's ``shuffle``): fill
    the buffer, then emit a random buffered item for every new one; drain at the end."""
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer
