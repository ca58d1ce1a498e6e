"""Access patterns, detected without hints.

Across files (:class:`OrderDetector`): a consumer that reads the files of a known order one
after the other (a dataset with ``shuffle=False``) is sequential after ``RUN`` consecutive
steps; the files after its position are then worth fetching ahead. Starting over at the first
file is an epoch restart and stays sequential. Random orders almost never produce ``RUN``
consecutive steps, so they trigger no prefetching.

Within a file (:class:`ReadPattern`): reads that start where the last one ended are
sequential, reads a constant distance apart are strided, anything else is random. A
sequential stream earns a readahead window that doubles on every sequential read up to a cap
and halves when readahead bytes were thrown away unread (as JuiceFS and ``weed mount`` do).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from .metrics import Counters

RUN = 3  # consecutive steps before a traversal counts as sequential


class Pattern(Enum):
    UNKNOWN = "unknown"
    SEQUENTIAL = "sequential"
    STRIDED = "strided"
    RANDOM = "random"


class OrderDetector:
    """Detects sequential traversals of one known order of items."""

    def __init__(self, order: Sequence[str], counters: Counters | None = None) -> None:
        self._order = list(order)
        self._position = {item: i for i, item in reversed(list(enumerate(self._order)))}
        self._last: int | None = None
        self._run = 0
        self._counters = counters

    def observe(self, item: str, ahead: int) -> list[str]:
        """Record a read; when the traversal is sequential, the next ``ahead`` items."""
        # A read of the first item right after the last one is an epoch restart: it
        # continues the run instead of breaking it.
        index = self._position.get(item)
        if index is None:
            self._last, self._run = None, 0
            return []
        restart = index == 0 and self._last == len(self._order) - 1
        if self._last is not None and (index == self._last + 1 or restart):
            self._run += 1
        else:
            self._run = 0
        self._last = index
        if self._run < RUN:
            return []
        if self._run == RUN and self._counters is not None:
            self._counters.add("pattern_sequential")
        # Not wrapping around: whether another epoch follows is not ours to guess.
        return self._order[index + 1:index + 1 + ahead]


class ReadPattern:
    """The pattern of one open file's reads, and its readahead window."""

    def __init__(self, min_window: int, max_window: int) -> None:
        self.min_window = min_window
        self.max_window = max_window
        self.window = 0
        self.pattern = Pattern.UNKNOWN
        self._next: int | None = None  # where a sequential read would start
        self._last_start: int | None = None
        self._stride: int | None = None

    def observe(self, start: int, length: int) -> Pattern:
        """Record a read of ``[start, start + length)``; returns the pattern now."""
        if start == self._next:
            self.pattern = Pattern.SEQUENTIAL
            self.window = min(self.max_window, max(self.min_window, self.window * 2))
        elif self._last_start is not None and start - self._last_start == self._stride:
            self.pattern = Pattern.STRIDED
            self.window = 0
        else:
            self.pattern = Pattern.RANDOM if self._last_start is not None else Pattern.UNKNOWN
            self.window = 0
        if self._last_start is not None:
            self._stride = start - self._last_start
        self._last_start, self._next = start, start + length
        return self.pattern

    def wasted(self) -> None:
        """Readahead bytes were discarded unread: shrink the window."""
        self.window //= 2
