"""TFRecord frames parsed a window at a time: the fast path of reading uncompressed records.

:func:`seaweed_data.core.records.iter_records` reads a stream field by field (three reads per
record). Here the stream is read in large pieces and every complete frame of a piece is
checked in one tight loop (length CRC, data CRC, both with the C ``crc32c``),
its data sliced out once. The records come out in batches of at most :data:`WINDOW`
bytes (unless one record is larger).

Only valid data takes this path. At the first defect (a checksum mismatch, or a file that ends
inside a frame) the file is read again from its start with ``iter_records``, whose error is
raised: the same :class:`~seaweed_data.CorruptDataError`, naming the file and the record's
byte offset, as every other reader of this package gives. No record of a damaged frame is
ever yielded.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import NoReturn

from ..core import records
from ..core.records import FOOTER_BYTES, HEADER_BYTES, MASK_DELTA, Readable, iter_records
from ..errors import CorruptDataError

try:
    from crc32c import crc32c as _crc32c
except ImportError:  # pragma: no cover - crc32c is a dependency; the fallback is slow
    _crc32c = records.crc32c  # type: ignore[assignment]

WINDOW = 4 << 20
"""Bytes of records per batch, at most (unless one record is larger)."""
MAX_READ = 64 << 20
"""The most asked of a stream at once (a corrupt length never allocates more)."""

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")


def scan_frames(buffer: bytes, start: int, limit: int) -> tuple[list[bytes], int, int]:
    """The data of the valid frames of ``buffer`` from ``start``: ``(records, end, needed)``.

    Stops after ``limit`` bytes of frames, at a frame that is not complete in ``buffer``
    (``needed``: bytes missing to complete it, at least 1), or at a defect (``needed`` -1).
    ``end`` is where the stop happened: the start of the unread frame.
    """
    records: list[bytes] = []
    size, pos, stop = len(buffer), start, start + limit
    unpack_header, unpack_footer, crc = _HEADER.unpack_from, _FOOTER.unpack_from, _crc32c
    while pos < stop:
        if pos + HEADER_BYTES > size:
            return records, pos, HEADER_BYTES - (size - pos) if pos < size else 0
        length, length_crc = unpack_header(buffer, pos)
        masked = crc(buffer[pos:pos + 8])
        if length_crc != (((masked >> 15) | (masked << 17)) + MASK_DELTA) & 0xFFFFFFFF:
            return records, pos, -1
        data_end = pos + HEADER_BYTES + length
        if data_end + FOOTER_BYTES > size:
            return records, pos, data_end + FOOTER_BYTES - size
        data = buffer[pos + HEADER_BYTES:data_end]
        masked = crc(data)
        if unpack_footer(buffer, data_end)[0] != (
                ((masked >> 15) | (masked << 17)) + MASK_DELTA) & 0xFFFFFFFF:
            return records, pos, -1
        records.append(data)
        pos = data_end + FOOTER_BYTES
    return records, pos, 0


def frame_batches(stream: Readable, path: str, reread: Callable[[], Readable],
                  max_bytes: int = WINDOW, read_size: int = WINDOW) -> Iterator[list[bytes]]:
    """The records of an uncompressed TFRecord ``stream``, in batches of up to about
    ``max_bytes``, reading ``read_size`` bytes at a time (more to complete a large frame).
    ``reread()`` gives the file again from its start: a defect is reported by reading it
    with ``iter_records`` (see the module docstring)."""
    pending = b""
    wanted = read_size
    while True:
        piece = stream.read(min(max(wanted, read_size), MAX_READ))
        if not piece:
            if pending:
                _raise_defect(reread, path)
            return
        buffer = pending + piece if pending else piece
        pos, needed = 0, 0
        while pos < len(buffer):
            records, pos, needed = scan_frames(buffer, pos, max_bytes)
            if records:
                yield records
            if needed:
                break
        if needed < 0:
            _raise_defect(reread, path)
        pending, wanted = buffer[pos:], needed


def _raise_defect(reread: Callable[[], Readable], path: str) -> NoReturn:
    for _ in iter_records(reread(), path=path):
        pass
    raise CorruptDataError(f"TFRecord {path}: the file changed while it was read", path=path)
