"""TFRecord framing: round trips, every corruption detected at its record, TensorFlow's
own reader and writer agree."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shard_files import framed

import seaweed_data as sd
from seaweed_data.core.records import (
    crc32c,
    crc32c_pure,
    iter_records,
    write_records,
)

records_strategy = st.lists(st.binary(max_size=300), max_size=8)


def read_all(data: bytes, compression: str | None = None) -> list[bytes]:
    return list(iter_records(io.BytesIO(data), path="/x.tfrecord", compression=compression))


@settings(max_examples=60, deadline=None)
@given(records_strategy, st.sampled_from([None, "GZIP", "ZLIB"]))
def test_any_records_round_trip(records, compression):
    out = io.BytesIO()
    assert write_records(out, records, compression=compression) == len(records)
    assert read_all(out.getvalue(), compression) == records


def read_until_error(data: bytes) -> tuple[list[bytes], sd.CorruptDataError | None]:
    got: list[bytes] = []
    try:
        for record in iter_records(io.BytesIO(data), path="/d/x.tfrecord"):
            got.append(record)
    except sd.CorruptDataError as error:
        return got, error
    return got, None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=6), st.data())
def test_any_bit_flip_is_detected_at_its_record(records, data):
    blob, offsets = framed(records)
    position = data.draw(st.integers(0, len(blob) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(blob)
    flipped[position] ^= 1 << bit
    got, error = read_until_error(bytes(flipped))
    hit = max(i for i, offset in enumerate(offsets) if offset <= position)
    assert error is not None
    assert error.offset == offsets[hit] and error.path == "/d/x.tfrecord"
    assert f"byte offset {offsets[hit]}" in str(error) and "/d/x.tfrecord" in str(error)
    assert got == records[:hit]  # never a wrong byte


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=6), st.data())
def test_any_truncation_is_detected_unless_at_a_record_boundary(records, data):
    blob, offsets = framed(records)
    cut = data.draw(st.integers(0, len(blob) - 1))
    got, error = read_until_error(blob[:cut])
    if cut in offsets:
        assert error is None and got == records[:offsets.index(cut)]
        return
    hit = max(i for i, offset in enumerate(offsets) if offset <= cut)
    assert error is not None and error.offset == offsets[hit]
    assert "truncated" in str(error)
    assert got == records[:hit]


def test_corrupt_compressed_streams_are_errors():
    out = io.BytesIO()
    write_records(out, [b"a" * 1000, b"b" * 1000], compression="GZIP")
    blob = out.getvalue()
    with pytest.raises(sd.CorruptDataError, match="truncated GZIP stream"):
        read_all(blob[:-5], "GZIP")
    broken = bytearray(blob)
    broken[12] ^= 0xFF
    with pytest.raises(sd.CorruptDataError, match=r"(corrupt GZIP stream|CRC mismatch)"):
        read_all(bytes(broken), "GZIP")
    with pytest.raises(ValueError, match="compression"):
        read_all(blob, "LZ4")


def test_records_match_tensorflow(tmp_path):
    tf = pytest.importorskip("tensorflow")
    records = [b"", b"x", os.urandom(70_000), b"tail"]
    ours = tmp_path / "ours.tfrecord"
    with open(ours, "wb") as f:
        write_records(f, records)
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(ours))] == records
    for compression in ("", "GZIP", "ZLIB"):
        theirs = tmp_path / f"theirs-{compression}.tfrecord"
        with tf.io.TFRecordWriter(str(theirs), options=compression) as writer:
            for record in records:
                writer.write(record)
        with open(theirs, "rb") as f:
            assert list(iter_records(f, path=str(theirs), compression=compression)) == records




@given(st.binary(max_size=200))
def test_pure_python_crc32c_matches_the_native_one(data):
    assert crc32c_pure(data) == crc32c(data)
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
