"""TFRecord frames parsed a window at a time: the fast path of reading uncompressed records.

:func:`seaweed_data.core.records.iter_records` reads a stream field by field (three reads per
record) and makes a ``bytes`` of every record. Here the stream is read in large pieces and
every complete frame of a piece is checked in one tight loop (length CRC, data CRC, both with
the C ``crc32c`` over views, nothing copied). What comes out are windows (:class:`Window`): a run
of checked frames as they lie in the file plus where each record's data starts and how long
it is, so TensorFlow cuts the records out natively (``tf.strings.substr``) instead of Python
making an object of each. A window holds at most :data:`WINDOW` bytes of frames (unless one
frame is larger), or a whole piece already in memory.

Only valid data takes this path. At the first defect (a checksum mismatch, or a file that ends
inside a frame) the file is read again from its start with ``iter_records``, whose error is
raised: the same :class:`~seaweed_data.CorruptDataError`, naming the file and the record's
byte offset, as every other reader of this package gives. No record of a damaged frame is
ever part of a window.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, NoReturn

import numpy as np

from ..core import records
from ..core.records import FOOTER_BYTES, HEADER_BYTES, MASK_DELTA, Readable, iter_records
from ..errors import CorruptDataError

try:
    from crc32c import crc32c as _crc32c
except ImportError:  # pragma: no cover - crc32c is a dependency; the fallback is slow
    _crc32c = records.crc32c  # type: ignore[assignment]

WINDOW = 4 << 20
"""Bytes of frames per window of a streamed file, at most (unless one frame is larger)."""
MAX_READ = 64 << 20
"""The most asked of a stream at once (a corrupt length never allocates more)."""

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")


class Window(NamedTuple):
    """Checked frames: ``data[starts[i]:starts[i] + lengths[i]]`` is record ``i``."""

    data: bytes
    starts: np.ndarray
    lengths: np.ndarray

    def records(self) -> list[bytes]:
        """The records as ``bytes`` (TensorFlow does this natively; here for tests)."""
        return [self.data[s:s + n] for s, n in zip(self.starts.tolist(),
                                                   self.lengths.tolist(), strict=True)]


def window_of(records: Iterable[bytes]) -> Window:
    """A window holding ``records`` (already checked, e.g. by ``iter_records``)."""
    items = list(records)
    lengths = np.fromiter((len(r) for r in items), dtype=np.int64, count=len(items))
    starts = np.zeros(len(items), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return Window(b"".join(items), starts, lengths)


def scan_frames(buffer: bytes, start: int,
                limit: int) -> tuple[list[int], list[int], int, int]:
    """The valid frames of ``buffer`` from ``start``: ``(starts, lengths, end, needed)``,
    with the start of each record's data and its length.

    Stops after ``limit`` bytes of frames, at a frame that is not complete in ``buffer``
    (``needed``: bytes missing to complete it, at least 1), or at a defect (``needed`` -1).
    ``end`` is where the stop happened: the start of the unread frame.
    """
    starts: list[int] = []
    lengths: list[int] = []
    view = memoryview(buffer)
    size, pos, stop = len(buffer), start, start + limit
    unpack_header, unpack_footer, crc = _HEADER.unpack_from, _FOOTER.unpack_from, _crc32c
    while pos < stop:
        if pos + HEADER_BYTES > size:
            return starts, lengths, pos, HEADER_BYTES - (size - pos) if pos < size else 0
        length, length_crc = unpack_header(buffer, pos)
        masked = crc(view[pos:pos + 8])
        if length_crc != (((masked >> 15) | (masked << 17)) + MASK_DELTA) & 0xFFFFFFFF:
            return starts, lengths, pos, -1
        data_start = pos + HEADER_BYTES
        data_end = data_start + length
        if data_end + FOOTER_BYTES > size:
            return starts, lengths, pos, data_end + FOOTER_BYTES - size
        masked = crc(view[data_start:data_end])
        if unpack_footer(buffer, data_end)[0] != (
                ((masked >> 15) | (masked << 17)) + MASK_DELTA) & 0xFFFFFFFF:
            return starts, lengths, pos, -1
        starts.append(data_start)
        lengths.append(length)
        pos = data_end + FOOTER_BYTES
    return starts, lengths, pos, 0


def frame_windows(stream: Readable, path: str, reread: Callable[[], Readable],
                  max_bytes: int = WINDOW, read_size: int = WINDOW) -> Iterator[Window]:
    """The records of an uncompressed TFRecord ``stream`` as windows of up to about
    ``max_bytes`` of frames, reading ``read_size`` bytes at a time (more to complete a large
    frame). ``reread()`` gives the file again from its start: a defect is reported by reading
    it with ``iter_records`` (see the module docstring)."""
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
            first = pos
            starts, lengths, pos, needed = scan_frames(buffer, pos, max_bytes)
            if starts:
                yield _window(buffer, first, pos, starts, lengths)
            if needed:
                break
        if needed < 0:
            _raise_defect(reread, path)
        pending, wanted = buffer[pos:], needed


def _window(buffer: bytes, first: int, end: int, starts: list[int],
            lengths: list[int]) -> Window:
    """The frames ``buffer[first:end]`` (the buffer itself when that is all of it)."""
    offsets = np.array(starts, dtype=np.int64)
    offsets -= first
    return Window(buffer[first:end], offsets, np.array(lengths, dtype=np.int64))


def _raise_defect(reread: Callable[[], Readable], path: str) -> NoReturn:
    for _ in iter_records(reread(), path=path):
        pass
    raise CorruptDataError(f"TFRecord {path}: the file changed while it was read", path=path)
