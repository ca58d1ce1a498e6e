"""Chunk math against a byte-by-byte reference (property tests)."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from seaweed_data.core.chunks import ChunkMap, clamp_range, plan_range, visible_pieces
from seaweed_data.core.entry import Chunk

chunk_lists = st.lists(
    st.tuples(st.integers(0, 300), st.integers(0, 120), st.integers(0, 5)),
    max_size=12,
).map(lambda specs: [Chunk(f"1,{i:x}00000001", off, size, ts)
                     for i, (off, size, ts) in enumerate(specs)])


def reference(chunks, size):
    """Which chunk (index) owns each byte, painting in (ts, list order)."""
    owner = [None] * size
    order = sorted(range(len(chunks)), key=lambda i: (chunks[i].modified_ts_ns, i))
    for i in order:
        c = chunks[i]
        for b in range(c.offset, min(c.stop, size)):
            owner[b] = c.file_id
    return owner


def render(plan):
    out = []
    for piece in plan:
        for b in range(piece.start, piece.stop):
            out.append(None if piece.chunk is None else piece.chunk.file_id)
            if piece.chunk is not None:
                assert 0 <= b - piece.chunk.offset < piece.chunk.size
    return out


@settings(max_examples=300, deadline=None)
@given(chunk_lists, st.integers(0, 450), st.integers(0, 450))
def test_plan_matches_byte_reference(chunks, a, b):
    size = 450
    start, stop = min(a, b), max(a, b)
    plan = ChunkMap(chunks).plan(start, stop)
    assert render(plan) == reference(chunks, size)[start:stop]
    # contiguous and ordered
    position = start
    for piece in plan:
        assert piece.start == position and piece.stop > piece.start
        position = piece.stop
    assert position == stop


@given(chunk_lists)
def test_visible_pieces_do_not_overlap(chunks):
    pieces = visible_pieces(chunks)
    for left, right in itertools.pairwise(pieces):
        assert left.stop <= right.start


def test_newest_chunk_wins_and_holes_are_zero_pieces():
    old = Chunk("1,a", 0, 10, modified_ts_ns=1)
    new = Chunk("1,b", 4, 2, modified_ts_ns=2)
    plan = plan_range(visible_pieces([new, old]), 0, 14)
    assert [(p.start, p.stop, p.chunk.file_id if p.chunk else None) for p in plan] == [
        (0, 4, "1,a"), (4, 6, "1,b"), (6, 10, "1,a"), (10, 14, None)]
    assert plan[2].chunk_start == 6


def test_clamp_range():
    assert clamp_range(10, 0, None) == (0, 10)
    assert clamp_range(10, 8, 5) == (8, 10)
    assert clamp_range(10, 12, 5) == (10, 10)
    assert clamp_range(10, -3, 2) == (0, 2)
    assert clamp_range(0, 0, None) == (0, 0)
