"""Readahead for open files: sequential readers get the next window fetched in the background.

:class:`ReadaheadReader` is the raw reader behind ``Client.open(path, "rb")``. While reads
follow each other, it keeps one window of the file in flight ahead of the reader (the window
grows as the stream stays sequential, see :class:`~seaweed_data.core.patterns.ReadPattern`);
a seek elsewhere discards the window (counted in ``readahead_wasted_bytes``) and shrinks it.
Random and strided readers fetch exactly what they ask for.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from .entry import Entry
from .files import RawReader, ReadRange
from .metrics import Counters
from .patterns import Pattern, ReadPattern

StartFetch = Callable[[Entry, int, int], "concurrent.futures.Future[bytes]"]

MIN_WINDOW = 1 << 20
MAX_WINDOW = 32 << 20


class ReadaheadReader(RawReader):
    """A :class:`RawReader` that reads ahead of sequential consumers."""

    def __init__(self, entry: Entry, read_range: ReadRange, start_fetch: StartFetch,
                 counters: Counters) -> None:
        super().__init__(entry, read_range)
        self._start_fetch = start_fetch
        self._counters = counters
        self._pattern = ReadPattern(MIN_WINDOW, MAX_WINDOW)
        self._buffer_start = 0
        self._buffer = b""
        self._served = 0
        self._ahead: tuple[int, int, concurrent.futures.Future[bytes]] | None = None

    def readinto(self, buffer: Any) -> int:
        self._check_open()
        view = memoryview(buffer).cast("B")
        position, wanted = self._position, min(len(view), max(0, self.size - self._position))
        if wanted == 0:
            return 0
        data = self._buffered(position, wanted)
        if data is None:
            data = self._read_range(self.entry, position, wanted)
        # what was served, not what was asked for: a read that ends at the buffer's end is
        # short, and the next one starts right after it (still sequential)
        pattern = self._observe(position, len(data))
        view[: len(data)] = data
        self._position += len(data)
        if pattern is Pattern.SEQUENTIAL:
            self._read_ahead()
        return len(data)

    def _observe(self, position: int, wanted: int) -> Pattern:
        """Classify this read; count each change of pattern (``pattern_sequential``, ...)."""
        before = self._pattern.pattern
        pattern = self._pattern.observe(position, wanted)
        if pattern is not before and pattern is not Pattern.UNKNOWN:
            self._counters.add(f"pattern_{pattern.value}")
        return pattern

    def _buffered(self, position: int, wanted: int) -> bytes | None:
        """Bytes at ``position`` from the window already fetched or in flight, if any."""
        if self._ahead is not None and not self._in_buffer(position):
            start, stop, future = self._ahead
            if start <= position < stop:  # the reader reached the window in flight
                self._ahead = None
                self._retire_buffer()
                try:
                    self._buffer_start, self._buffer = start, future.result()
                except Exception:
                    self._buffer_start, self._buffer = position, b""
        if self._in_buffer(position):
            offset = position - self._buffer_start
            data = self._buffer[offset:offset + wanted]
            self._served += len(data)
            return data
        self._discard()
        return None

    def _in_buffer(self, position: int) -> bool:
        return self._buffer_start <= position < self._buffer_start + len(self._buffer)

    def _read_ahead(self) -> None:
        if self._ahead is not None:
            return
        end = max(self._position, self._buffer_start + len(self._buffer))
        if end >= self.size or self._pattern.window == 0:
            return
        stop = min(self.size, end + self._pattern.window)
        self._counters.add("readahead_bytes", stop - end)
        self._ahead = (end, stop, self._start_fetch(self.entry, end, stop - end))

    def _retire_buffer(self) -> None:
        unread = max(0, len(self._buffer) - self._served)
        if unread:
            self._counters.add("readahead_wasted_bytes", unread)
            self._pattern.wasted()
        self._buffer_start, self._buffer, self._served = self._position, b"", 0

    def _discard(self) -> None:
        """The reader left the readahead window: whatever it did not read was wasted."""
        if self._ahead is not None:
            start, stop, future = self._ahead
            future.cancel()
            self._counters.add("readahead_wasted_bytes", stop - start)
            self._pattern.wasted()
            self._ahead = None
        self._retire_buffer()

    def close(self) -> None:
        if not self.closed and self._ahead is not None:
            self._ahead[2].cancel()
            self._ahead = None
        super().close()
