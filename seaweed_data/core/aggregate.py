"""Aggregation: many small ranges of one file become a few requests.

Ranges whose gap is at most ``Config.coalesce_gap_bytes`` are fetched as one span (reading a
few bytes nobody asked for is cheaper than another round trip); each span is then split by
chunk as any read is, and the caller's ranges are cut back out, in the caller's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Span:
    """One request's worth of bytes, ``[start, stop)``, serving the ranges at ``members``."""

    start: int
    stop: int
    members: list[int] = field(default_factory=list)


def coalesce(ranges: Sequence[tuple[int, int]], gap: int) -> list[Span]:
    """Merge ``(start, stop)`` ranges that overlap or lie within ``gap`` bytes of each other.

    Empty ranges are served by no span (they read as ``b""``).
    """
    spans: list[Span] = []
    order = sorted((r for r in range(len(ranges)) if ranges[r][1] > ranges[r][0]),
                   key=lambda i: ranges[i])
    for index in order:
        start, stop = ranges[index]
        if spans and start - spans[-1].stop <= gap:
            spans[-1].stop = max(spans[-1].stop, stop)
            spans[-1].members.append(index)
        else:
            spans.append(Span(start, stop, [index]))
    return spans


def split(spans: Sequence[Span], data: Sequence[bytes], ranges: Sequence[tuple[int, int]],
          ) -> list[bytes]:
    """Cut each range back out of the bytes of its span; results in the order of ``ranges``."""
    out = [b""] * len(ranges)
    for span, payload in zip(spans, data, strict=True):
        for index in span.members:
            start, stop = ranges[index]
            out[index] = payload[start - span.start:stop - span.start]
    return out
