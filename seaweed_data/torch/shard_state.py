"""Resume state of a ShardDataset: where each reader stands in an epoch, as plain data.

A state dict (JSON-compatible) is::

    {"version": 1, "epoch": 3, "seed": 0, "shuffle": True, "equal_per_rank": False,
     "shards": 120,                                    # None if never listed here
     "progress": {"0/2/1/4": [5, 17, 229], ...}}       # rank/world/worker/workers:
                                                       # [shard position, samples into that
                                                       #  shard, samples this epoch]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .shard_plan import Slot, layout_of

STATE_VERSION = 1
CHECKED_OPTIONS = ("seed", "shuffle", "equal_per_rank")


@dataclass
class Progress:
    """Where one reader stands in an epoch."""

    epoch: int
    shard: int = 0  # position in the reader's shard list
    sample: int = 0  # samples handed out from that shard
    yielded: int = 0  # samples handed out this epoch

    def as_list(self) -> list[int]:
        return [self.shard, self.sample, self.yielded]


@dataclass
class Resume:
    """A loaded state, waiting for the next iteration of its epoch."""

    epoch: int
    progress: dict[str, Progress] = field(default_factory=dict)
    shards: int | None = None


def make_state(options: dict[str, Any], epoch: int, shards: int | None,
               live: dict[str, Progress], pending: Resume | None) -> dict[str, Any]:
    """The state dict: ``live`` progress of ``epoch``, then what is loaded and not resumed."""
    progress = {key: p.as_list() for key, p in live.items() if p.epoch == epoch}
    if pending is not None and pending.epoch == epoch:
        for key, p in pending.progress.items():
            progress.setdefault(key, p.as_list())
    return {"version": STATE_VERSION, "epoch": epoch, **options, "shards": shards,
            "progress": progress}


def parse_state(state: dict[str, Any], options: dict[str, Any]) -> Resume:
    """A state dict checked against this dataset's ``options``; ValueError if it does not fit."""
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"not a ShardDataset state (version {state.get('version')!r})")
    for name in CHECKED_OPTIONS:
        if state.get(name) != options[name]:
            raise ValueError(f"the state was saved with {name}={state.get(name)!r}, this "
                             f"dataset has {name}={options[name]!r}")
    epoch = int(state["epoch"])
    if epoch < 0:
        raise ValueError(f"bad epoch in state: {epoch}")
    progress = {}
    for key, (shard, sample, yielded) in dict(state["progress"]).items():
        layout_of(key)
        progress[str(key)] = Progress(epoch, int(shard), int(sample), int(yielded))
    shards = state.get("shards")
    return Resume(epoch, progress, None if shards is None else int(shards))


def starting_point(resume: Resume | None, slot: Slot, epoch: int, shards: int) -> Progress:
    """Where ``slot`` starts ``epoch``: its loaded progress, else the beginning.

    ValueError if the state was saved over another number of shards or by readers laid out
    differently (another world size or number of workers): their shard lists differ.
    """
    if resume is None or resume.epoch != epoch or not resume.progress:
        return Progress(epoch)
    if resume.shards is not None and resume.shards != shards:
        raise ValueError(f"the state was saved over {resume.shards} shards, there are {shards}")
    layouts = {layout_of(key) for key in resume.progress}
    if layouts != {slot.layout}:
        raise ValueError(
            f"the state was saved by readers laid out as (world size, workers) "
            f"{sorted(layouts)}, this iteration is {slot.layout}: resume with the same world "
            "size and num_workers")
    saved = resume.progress.get(slot.key)
    if saved is None:
        return Progress(epoch)
    return Progress(epoch, saved.shard, saved.sample, saved.yielded)
