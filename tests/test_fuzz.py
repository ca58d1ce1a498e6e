"""Fuzzing the parsers of untrusted bytes: TFRecord framing, chunk-range math, filer JSON.

Whatever they are fed, they either work or raise one of our own errors (the
:mod:`seaweed_data.errors` tree), never a ``TypeError``, ``KeyError``, ``struct.error``,
``zlib.error``, ``MemoryError`` or a hang; and what they return is still right (records are
records that were written, pieces tile the asked range, entries have sane fields).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import struct
import zlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

import seaweed_data as sd
from seaweed_data.core.chunks import ChunkMap, clamp_range, plan_range, visible_pieces
from seaweed_data.core.entry import Chunk, Entry, parse_entry
from seaweed_data.core.filer import Filer
from seaweed_data.core.http import Response
from seaweed_data.core.records import encode_record, iter_records, masked_crc, write_records

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


class Dribble(io.RawIOBase):
    """A stream that hands out at most ``step`` bytes per read (as a socket may)."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._at = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self._step if size < 0 else min(size, self._step)
        out = bytes(self._data[self._at:self._at + size])
        self._at += len(out)
        return out


def drain(data: bytes, compression: str | None = None, step: int | None = None,
          check_crc: bool = True, skip: list[sd.CorruptDataError] | None = None
          ) -> tuple[list[bytes], sd.CorruptDataError | None]:
    """Every record until the end or the first error (which must be ours)."""
    stream: Any = io.BytesIO(data) if step is None else Dribble(data, step)
    got: list[bytes] = []
    on_bad = skip.append if skip is not None else None
    try:
        for record in iter_records(stream, path="/fuzz.tfrecord", compression=compression,
                                   check_crc=check_crc, on_bad_data=on_bad):
            got.append(record)
    except sd.CorruptDataError as error:
        assert error.path == "/fuzz.tfrecord" and error.offset is not None
        assert str(error).startswith(f"TFRecord /fuzz.tfrecord: record at byte offset "
                                     f"{error.offset}: ")
        return got, error
    return got, None


def frame(records: list[bytes], compression: str | None) -> bytes:
    out = io.BytesIO()
    write_records(out, records, compression=compression)
    return out.getvalue()


compressions = st.sampled_from([None, "GZIP", "ZLIB"])
record_lists = st.lists(st.binary(max_size=300), max_size=8)


# -- TFRecord framing --------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2000), compressions, st.integers(1, 64), st.booleans())
def test_arbitrary_bytes_are_records_or_our_error(data: bytes, compression: str | None,
                                                  step: int, check_crc: bool) -> None:
    drain(data, compression, step=step, check_crc=check_crc)


@FUZZ
@given(record_lists, compressions, st.data())
def test_mutated_streams_yield_only_written_records(records: list[bytes],
                                                    compression: str | None,
                                                    data: st.DataObject) -> None:
    valid = bytearray(frame(records, compression))
    kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
    at = data.draw(st.integers(0, len(valid)))
    if kind == "flip":
        if at < len(valid):
            valid[at] ^= data.draw(st.integers(1, 255))
    elif kind == "insert":
        valid[at:at] = data.draw(st.binary(min_size=1, max_size=20))
    elif kind == "delete":
        del valid[at:at + data.draw(st.integers(1, 40))]
    elif kind == "truncate":
        del valid[at:]
    else:  # a record's frame pasted at a random place
        valid[at:at] = encode_record(data.draw(st.sampled_from(records or [b"x"])))
    skipped: list[sd.CorruptDataError] = []
    got, error = drain(bytes(valid), compression, step=data.draw(st.integers(1, 97)),
                       skip=skipped)
    pool = set(records) | ({b"x"} if kind == "splice" else set())
    # A mutation can also make a whole valid frame by coincidence: a splice into a record's
    # frame leaves the record's header followed by the spliced header, which is a valid
    # 8-byte record when those 8 bytes equal the length (same bytes, same CRC).
    whole = bytes(valid)
    assert all(record in pool or (compression is None and encode_record(record) in whole)
               for record in got), "a record that was never written"
    assert all(isinstance(e, sd.CorruptDataError) for e in skipped)
    if kind == "truncate" and error is None and compression is None:
        assert got == records[:len(got)]  # cut at a boundary: a shorter valid file


@FUZZ
@given(record_lists, compressions, st.integers(1, 4096))
def test_valid_streams_read_back_exactly_however_they_are_delivered(
        records: list[bytes], compression: str | None, step: int) -> None:
    assert drain(frame(records, compression), compression, step=step) == (records, None)


@FUZZ
@given(st.integers(0, 2**64 - 1), st.binary(max_size=64))
def test_any_claimed_length_is_checked_not_allocated(length: int, tail: bytes) -> None:
    """A header whose length CRC matches claims up to 2**64 - 1 bytes: the reader reads what
    is there and reports the truncation; it never reserves the claimed size."""
    head = struct.pack("<Q", length)
    data = head + struct.pack("<I", masked_crc(head)) + tail
    got, error = drain(data)
    if length + 4 <= len(tail):
        assert got or error is not None
    else:
        assert got == [] and error is not None and "truncated record body" in str(error)


def test_a_zlib_stream_followed_by_garbage_is_our_error() -> None:
    data = zlib.compress(frame([b"a", b"b"], None)) + b"\x00garbage"
    got, error = drain(data, "ZLIB")
    assert got == [b"a", b"b"] and error is not None


# -- chunk and range math ----------------------------------------------------------------------


chunk_specs = st.lists(
    st.tuples(st.integers(-50, 400), st.integers(-10, 150), st.integers(0, 4)), max_size=10)


def chunks_of(specs: list[tuple[int, int, int]]) -> list[Chunk]:
    return [Chunk(f"{i % 3 + 1},{i:x}00000001", off, size, ts)
            for i, (off, size, ts) in enumerate(specs)]


def owners(chunks: list[Chunk], start: int, stop: int) -> list[str | None]:
    """Byte by byte: the newest chunk (ties: the later one) covering it, else a hole."""
    owner: dict[int, str] = {}
    for i in sorted(range(len(chunks)), key=lambda i: (chunks[i].modified_ts_ns, i)):
        chunk = chunks[i]
        for b in range(max(chunk.offset, start), min(chunk.stop, stop)):
            owner[b] = chunk.file_id
    return [owner.get(b) for b in range(start, stop)]


@FUZZ
@given(chunk_specs, st.integers(-100, 600), st.one_of(st.none(), st.integers(-100, 600)),
       st.integers(0, 500))
def test_ranges_tile_exactly_and_newest_chunks_win(specs: list[tuple[int, int, int]],
                                                   offset: int, length: int | None,
                                                   size: int) -> None:
    chunks = chunks_of(specs)
    start, stop = clamp_range(size, offset, length)
    assert 0 <= start <= stop <= size
    if length is not None:
        assert stop - start <= max(length, 0)
    plan = ChunkMap(chunks).plan(start, stop)
    position = start
    rendered: list[str | None] = []
    for piece in plan:
        assert piece.start == position < piece.stop
        if piece.chunk is not None:
            assert piece.chunk.offset <= piece.start and piece.stop <= piece.chunk.stop
            assert 0 <= piece.chunk_start < piece.chunk.size
        rendered += [None if piece.chunk is None else piece.chunk.file_id] * piece.size
        position = piece.stop
    assert position == stop
    assert rendered == owners(chunks, start, stop)


@FUZZ
@given(chunk_specs)
def test_visible_pieces_are_sorted_disjoint_and_non_empty(
        specs: list[tuple[int, int, int]]) -> None:
    pieces = visible_pieces(chunks_of(specs))
    for piece in pieces:
        assert piece.start < piece.stop and piece.chunk is not None
    for left, right in itertools.pairwise(pieces):
        assert left.stop <= right.start
    assert plan_range(pieces, 0, 0) == []


# -- filer JSON: entries and listing pages -----------------------------------------------------


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20)

ENTRY_KEYS = ["FullPath", "Mode", "FileSize", "Mtime", "Mime", "TtlSec", "Md5", "chunks",
              "Content", "Remote", "Extended"]
CHUNK_KEYS = ["file_id", "fid", "offset", "size", "modified_ts_ns", "e_tag", "cipher_key",
              "is_compressed", "is_chunk_manifest"]
chunk_objects = st.dictionaries(st.sampled_from(CHUNK_KEYS), json_values, max_size=6)
entry_objects = st.dictionaries(
    st.sampled_from(ENTRY_KEYS),
    json_values | st.lists(chunk_objects, max_size=3) | st.text(max_size=30), max_size=8)


def check_entry(entry: Entry) -> None:
    """An entry the rest of the engine can use without tripping over its fields."""
    assert isinstance(entry.path, str) and isinstance(entry.size, int) and entry.size >= 0
    assert isinstance(entry.mtime, float) and isinstance(entry.ttl_sec, int)
    assert isinstance(entry.name, str) and isinstance(entry.version, str)
    for chunk in entry.chunks:
        assert isinstance(chunk.file_id, str) and isinstance(chunk.volume_id, str)
        assert isinstance(chunk.offset, int) and isinstance(chunk.size, int)
        assert chunk.offset >= 0 and chunk.size >= 0


@FUZZ
@given(st.one_of(entry_objects, json_values))
def test_any_entry_json_is_an_entry_or_a_server_error(data: Any) -> None:
    try:
        entry = parse_entry(data, "/fuzz")
    except sd.ServerError as error:
        assert "/fuzz" in str(error) or "malformed filer entry" in str(error)
        return
    check_entry(entry)


class CannedHttp:
    """Answers every request with one canned filer response (no real filer sends arbitrary
    JSON; this feeds the listing parser what a broken or hostile one could)."""

    def __init__(self, body: bytes, content_type: str = "application/json") -> None:
        self.body = body
        self.headers = CIMultiDictProxy(CIMultiDict({"Content-Type": content_type}))

    class tokens:  # a stand-in for Http.tokens: no keys
        @staticmethod
        def filer_header(method: str) -> dict[str, str]:
            return {}

    async def request(self, method: str, url: str, **kwargs: Any) -> Response:
        return Response(200, self.headers, [self.body])


def list_page(body: bytes) -> tuple[list[Entry], str, bool]:
    filer = Filer("http://127.0.0.1:1", CannedHttp(body), sd.Config())  # type: ignore[arg-type]
    return asyncio.run(filer.list_page("/dir"))


listing_objects = st.fixed_dictionaries(
    {}, optional={"Path": json_values, "Entries": st.lists(entry_objects, max_size=3)
                  | json_values, "LastFileName": json_values,
                  "ShouldDisplayLoadMore": json_values})


@FUZZ
@given(st.one_of(listing_objects, json_values))
def test_any_listing_json_is_entries_or_a_server_error(data: Any) -> None:
    try:
        entries, last, more = list_page(json.dumps(data).encode())
    except sd.ServerError:
        return
    assert isinstance(last, str) and isinstance(more, bool)
    for entry in entries:
        check_entry(entry)


@FUZZ
@given(st.binary(max_size=200))
def test_any_listing_bytes_are_entries_or_a_server_error(body: bytes) -> None:
    with contextlib.suppress(sd.ServerError):
        list_page(body)


def test_listing_samples_that_used_to_escape_as_python_errors() -> None:
    for body in [b'{"Entries": 5}', b'{"Entries": [5]}', b'{"Entries": [{"chunks": 3}]}',
                 b'{"Entries": [{"FullPath": 7}]}', b'{"Entries": [{"FileSize": -4}]}']:
        try:
            entries, _, _ = list_page(body)
        except sd.ServerError:
            continue
        for entry in entries:
            check_entry(entry)
