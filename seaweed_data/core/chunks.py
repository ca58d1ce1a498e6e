"""Chunk and range math: which bytes of which needle make up a byte range of a file.

Chunks may overlap (a file rewritten in place, by ``weed mount`` for example): the chunk with
the newest ``modified_ts_ns`` wins, later chunks in the list win ties, and bytes no chunk covers
read as zeros (a hole). All functions here are pure.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from .entry import Chunk


@dataclass(frozen=True)
class Piece:
    """File bytes ``[start, stop)``; served by ``chunk`` or, when it is None, zeros."""

    start: int
    stop: int
    chunk: Chunk | None

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def chunk_start(self) -> int:
        """Where the piece begins inside its chunk's data."""
        assert self.chunk is not None
        return self.start - self.chunk.offset


def visible_pieces(chunks: Sequence[Chunk]) -> list[Piece]:
    """Sorted, non-overlapping pieces after newer chunks cover older ones (no holes listed)."""
    order = sorted(range(len(chunks)), key=lambda i: (chunks[i].modified_ts_ns, i))
    pieces: list[Piece] = []
    starts: list[int] = []
    for i in order:
        chunk = chunks[i]
        if chunk.size <= 0:
            continue
        start, stop = chunk.offset, chunk.stop
        lo = bisect_right(starts, start) - 1
        if lo < 0 or pieces[lo].stop <= start:
            lo += 1
        hi = bisect_left(starts, stop)
        replacement = [Piece(start, stop, chunk)]
        if lo < hi:
            first, last = pieces[lo], pieces[hi - 1]
            if first.start < start:
                replacement.insert(0, Piece(first.start, start, first.chunk))
            if last.stop > stop:
                replacement.append(Piece(stop, last.stop, last.chunk))
        pieces[lo:hi] = replacement
        starts[lo:hi] = [p.start for p in replacement]
    return pieces


class ChunkMap:
    """The visible pieces of one file, ready to plan many range reads."""

    def __init__(self, chunks: Sequence[Chunk]) -> None:
        self.pieces = visible_pieces(chunks)
        self._stops = [p.stop for p in self.pieces]

    def plan(self, start: int, stop: int) -> list[Piece]:
        return plan_range(self.pieces, start, stop, self._stops)


def plan_range(pieces: Sequence[Piece], start: int, stop: int,
               stops: Sequence[int] | None = None) -> list[Piece]:
    """The pieces, clipped to ``[start, stop)``, with holes as zero pieces, in order."""
    plan: list[Piece] = []
    position = start
    if stops is None:
        stops = [p.stop for p in pieces]
    for piece in pieces[bisect_right(stops, start):]:
        if piece.start >= stop:
            break
        if piece.start > position:
            plan.append(Piece(position, piece.start, None))
            position = piece.start
        end = min(piece.stop, stop)
        if end > position:
            plan.append(Piece(position, end, piece.chunk))
            position = end
    if position < stop:
        plan.append(Piece(position, stop, None))
    return plan


def clamp_range(size: int, offset: int, length: int | None) -> tuple[int, int]:
    """``(start, stop)`` of a read of ``length`` bytes at ``offset`` in a file of ``size``."""
    start = min(max(offset, 0), size)
    stop = size if length is None else min(size, start + max(length, 0))
    return start, stop
