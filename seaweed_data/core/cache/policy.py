"""The eviction-policy interface of the memory tier, and :func:`make_policy` to pick one by name.

A policy does not store bytes. The tier owns the entries (an ``lru-dict`` in recency order),
tells the policy which keys come and go, and asks it for a victim when a new value does not fit.
Returning ``None`` instead of a victim refuses admission of the newcomer. The tier serialises
every call under its lock, so policies need no locking of their own.

Hints name *items* (file paths, :attr:`BlockKey.item`); all blocks of an item share its next use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from seaweed_data.core.cache.keys import BlockKey
from seaweed_data.errors import ConfigError

POLICY_NAMES = ("lru", "future")


class RecencyOrder(Protocol):
    """The tier's entries in recency order (an ``lru.LRU``): the least recent is the last."""

    def peek_last_item(self) -> tuple[BlockKey, object] | None:
        """The least recently used ``(key, value)``, or ``None`` when empty."""


class EvictionPolicy(Protocol):
    """What the memory tier needs from an eviction policy."""

    name: str

    def inserted(self, key: BlockKey) -> None:
        """``key`` was stored."""

    def removed(self, key: BlockKey) -> None:
        """``key`` left the tier (evicted, replaced or removed)."""

    def accessed(self, key: BlockKey) -> None:
        """``key`` was a hit (the tier has already refreshed its recency)."""

    def cleared(self) -> None:
        """Every entry left the tier; hints are kept."""

    def victim(self, incoming: BlockKey, entries: RecencyOrder) -> BlockKey | None:
        """The cached key to evict to make room for ``incoming``; ``None`` refuses ``incoming``."""

    def set_future(self, items: Sequence[str], start: int = 0) -> None:
        """Replace the hint stream by ``items[start:]``: the items in the order of reading."""

    def extend_future(self, items: Iterable[str]) -> None:
        """Append ``items`` to the hint stream (for example the next epoch's order)."""

    def on_demand(self, item: str) -> None:
        """The consumer reads ``item`` now, hit or miss (call it before storing fetched bytes)."""

    def wanted(self, item: str) -> bool:
        """Whether ``item`` may be read again: ``False`` only when the hints ahead do not read
        it (a tier with a disk tier behind it then does not keep it)."""

    def unneeded(self) -> list[BlockKey]:
        """The cached blocks whose items the hints ahead do not read (none while no hints are
        ahead: then nothing is known)."""


def make_policy(name: str) -> EvictionPolicy:
    """A fresh policy by its ``Config(eviction=...)`` name: ``"lru"`` or ``"future"``."""
    # Imported here because both modules import this one for the interface.
    from seaweed_data.core.cache.future import FutureAwareEviction
    from seaweed_data.core.cache.lru import LRUEviction

    if name == "lru":
        return LRUEviction()
    if name == "future":
        return FutureAwareEviction()
    raise ConfigError(f"unknown eviction policy {name!r}; expected one of {POLICY_NAMES}")
