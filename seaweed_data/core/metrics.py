"""Counters: per client, and summed for the whole process in :data:`PROCESS`."""

from __future__ import annotations

import os
import threading
from collections import Counter

COUNTER_NAMES = (
    "bytes_fetched", "requests", "filer_requests", "master_requests", "volume_requests",
    "bytes_uploaded", "retries", "failovers", "cache_hits", "cache_misses",
    "prefetch_issued", "prefetch_used", "prefetch_wasted", "prefetch_late",
)


class Counters:
    """Thread-safe named integer counters; increments also feed a parent (the process)."""

    def __init__(self, parent: Counters | None = None) -> None:
        self._lock = threading.Lock()
        self._values: Counter[str] = Counter()
        self._parent = parent

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] += amount
        if self._parent is not None:
            self._parent.add(name, amount)

    def get(self, name: str) -> int:
        return self._values[name]

    def snapshot(self) -> dict[str, int]:
        """Every standard counter (zero if unused) plus any other that was counted."""
        with self._lock:
            values = dict(self._values)
        return {**dict.fromkeys(COUNTER_NAMES, 0), **values}

    def reset(self) -> None:
        with self._lock:
            self._values.clear()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


PROCESS = Counters()
"""Everything every client of this process counted."""

os.register_at_fork(after_in_child=PROCESS._after_fork)


def stats() -> dict[str, int]:
    """Process-wide counters: ``bytes_fetched``, ``requests``, ``cache_hits``, ..."""
    return PROCESS.snapshot()
