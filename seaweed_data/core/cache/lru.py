"""Least-recently-used eviction, on the recency order the tier's ``lru-dict`` already keeps."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from seaweed_data.core.cache.keys import BlockKey
from seaweed_data.core.cache.policy import RecencyOrder


class LRUEviction:
    """Evict the least recently used entry; admit everything that fits in the tier.

    Hints are accepted and ignored, so that callers need not know which policy is configured.
    """

    name = "lru"

    def inserted(self, key: BlockKey) -> None:
        """Nothing to track: the tier's ``lru-dict`` keeps the order."""

    def removed(self, key: BlockKey) -> None:
        """Nothing to track."""

    def accessed(self, key: BlockKey) -> None:
        """Nothing to track: the tier's ``get`` already refreshed the recency."""

    def cleared(self) -> None:
        """Nothing to track."""

    def victim(self, incoming: BlockKey, entries: RecencyOrder) -> BlockKey | None:
        """The least recently used key (``None`` only when the tier is empty)."""
        last = entries.peek_last_item()
        return None if last is None else last[0]

    def set_future(self, items: Sequence[str], start: int = 0) -> None:
        """Ignored: LRU does not look ahead."""

    def extend_future(self, items: Iterable[str]) -> None:
        """Ignored: LRU does not look ahead."""

    def on_demand(self, item: str) -> None:
        """Ignored: LRU does not look ahead."""

    def wanted(self, item: str) -> bool:
        return True  # no knowledge of the future: anything may come back

    def unneeded(self) -> list[BlockKey]:
        return []
