"""TFRecord framing without TensorFlow: files of length-prefixed, checksummed records.

Each record is::

    uint64 length (little-endian)
    uint32 masked CRC-32C of those 8 length bytes
    byte   data[length]
    uint32 masked CRC-32C of the data

where ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2**32). A file may be
compressed as a whole (``"GZIP"`` or ``"ZLIB"``, as ``tf.io.TFRecordOptions`` writes it).

:func:`iter_records` reads incrementally from any binary file-like object, so records flow
while the file is still arriving (e.g. through ``Client.open(path)``, whose readahead fetches
the next window in the background). Every defect is a
:class:`~seaweed_data.errors.CorruptDataError` naming the file, the byte offset of the record
(in the decompressed stream for compressed files) and what is wrong; no byte of a damaged
record is ever yielded. A file cut exactly at a record boundary is indistinguishable from a
shorter valid file: it reads as the records before the cut.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from ..errors import CorruptDataError

MASK_DELTA = 0xA282EAD8
HEADER_BYTES = 12  # length (8) + its masked CRC (4)
FOOTER_BYTES = 4  # the data's masked CRC
READ_CHUNK = 1 << 16  # compressed bytes read at a time
MAX_READ = 16 << 20  # the most asked of the stream at once (a corrupt length never allocates)
COMPRESSIONS = ("", "GZIP", "ZLIB")

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


try:
    from crc32c import crc32c as _native_crc32c
except ImportError:  # pragma: no cover - crc32c is a dependency; the fallback is slow
    _native_crc32c = None  # type: ignore[assignment]


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c_pure(data: bytes | memoryview) -> int:
    """CRC-32C (Castagnoli) in pure Python: the slow fallback when ``crc32c`` is missing."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c(data: bytes | memoryview) -> int:
    """CRC-32C of ``data``: the ``crc32c`` package (hardware accelerated) when installed."""
    if _native_crc32c is not None:
        return int(_native_crc32c(data))
    return crc32c_pure(data)  # pragma: no cover


def masked_crc(data: bytes | memoryview) -> int:
    """The masked CRC-32C that TFRecord stores."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


def encode_record(data: bytes) -> bytes:
    """One framed record: header, ``data``, footer."""
    length = _LENGTH.pack(len(data))
    return b"".join((length, _CRC.pack(masked_crc(length)), data,
                     _CRC.pack(masked_crc(data))))


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class Readable(Protocol):
    """A binary stream to read from (a file, ``Client.open(path)``, ``io.BytesIO``)."""

    def read(self, size: int = -1, /) -> bytes: ...


def write_records(stream: _Writable, records: Iterable[bytes], *,
                  compression: str | None = None) -> int:
    """Write ``records`` framed to ``stream`` (compressed if asked); the number written."""
    kind = _compression(compression)
    compressor = None
    if kind == "GZIP":
        compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    elif kind == "ZLIB":
        compressor = zlib.compressobj(wbits=zlib.MAX_WBITS)
    count = 0
    for record in records:
        framed = encode_record(bytes(record))
        stream.write(compressor.compress(framed) if compressor else framed)
        count += 1
    if compressor is not None:
        stream.write(compressor.flush())
    return count


SkipBadData = Callable[[CorruptDataError], None]


def iter_records(stream: Readable, *, path: str, compression: str | None = None,
                 check_crc: bool = True,
                 on_bad_data: SkipBadData | None = None) -> Iterator[bytes]:
    """The records of a TFRecord stream, read incrementally; ``path`` names it in errors.

    ``compression``: None or ``""`` (plain), ``"GZIP"`` or ``"ZLIB"``. With ``check_crc``
    False the checksums are not verified (framing errors are still detected). ``on_bad_data``,
    when given, receives the error of each record whose *data* fails its CRC, and the record is
    left out: its framing holds, so the next one can still be read. Any other defect (length
    CRC, truncation, a broken compressed stream) ends the stream with the error.
    """
    kind = _compression(compression)
    source = _PlainSource(stream) if not kind else _InflatingSource(stream, kind)
    while True:
        try:
            record = _read_record(source, path, check_crc)
        except _BadData as bad:
            if on_bad_data is None:
                raise bad.error from None
            on_bad_data(bad.error)
            continue
        if record is None:
            return
        yield record


class _BadData(Exception):
    """A record whose data failed its CRC (internal: the framing of the stream is intact)."""

    def __init__(self, error: CorruptDataError) -> None:
        super().__init__(str(error))
        self.error = error


class _StreamError(Exception):
    """The compressed stream itself is broken (internal; reported at the record's offset)."""


def _read_record(source: _PlainSource, path: str, check_crc: bool) -> bytes | None:
    """The next record's data; None at a clean end of the stream."""
    offset = source.offset
    try:
        return _parse_record(source, path, offset, check_crc)
    except _StreamError as exc:
        raise _corrupt(path, offset, str(exc)) from exc.__cause__


def _parse_record(source: _PlainSource, path: str, offset: int,
                  check_crc: bool) -> bytes | None:
    header = source.read_exact(HEADER_BYTES)
    if not header:
        return None
    if len(header) < HEADER_BYTES:
        raise _corrupt(path, offset,
                       f"truncated record header ({len(header)} of {HEADER_BYTES} bytes)")
    if check_crc and _CRC.unpack_from(header, 8)[0] != masked_crc(header[:8]):
        raise _corrupt(path, offset, "corrupt record length (length CRC mismatch)")
    (length,) = _LENGTH.unpack_from(header)
    data = source.read_exact(length)
    footer = source.read_exact(FOOTER_BYTES) if len(data) == length else b""
    if len(footer) < FOOTER_BYTES:
        raise _corrupt(path, offset, f"truncated record body ({len(data) + len(footer)} of "
                                     f"{length + FOOTER_BYTES} bytes after the header)")
    if check_crc and _CRC.unpack(footer)[0] != masked_crc(data):
        raise _BadData(_corrupt(path, offset, "corrupt record data (data CRC mismatch)"))
    return data


class _PlainSource:
    """Reads exactly ``n`` bytes (fewer only at the end) and counts the offset."""

    def __init__(self, stream: Readable) -> None:
        self._stream = stream
        self.offset = 0

    def read_exact(self, n: int) -> bytes:
        parts: list[bytes] = []
        missing = n
        while missing > 0:
            part = self._pull(min(missing, MAX_READ))
            if not part:
                break
            parts.append(part)
            missing -= len(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.offset += len(data)
        return data

    def _pull(self, n: int) -> bytes:
        return self._stream.read(n)


class _InflatingSource(_PlainSource):
    """A decompressed view of a GZIP or ZLIB stream (several gzip members are one stream)."""

    def __init__(self, stream: Readable, kind: str) -> None:
        super().__init__(stream)
        self._wbits = 16 + zlib.MAX_WBITS if kind == "GZIP" else zlib.MAX_WBITS
        self._kind = kind
        self._inflater = zlib.decompressobj(wbits=self._wbits)
        self._pending = b""  # compressed input not yet given to the inflater
        self._started = False  # whether the current member received any input

    def _pull(self, n: int) -> bytes:
        while True:
            if self._inflater.eof:  # a member ended: what follows it starts the next one
                self._pending = self._inflater.unused_data + self._pending
                if not self._pending and not self._more():
                    return b""
                self._inflater, self._started = zlib.decompressobj(wbits=self._wbits), False
            elif self._inflater.unconsumed_tail:  # input held back by the output limit
                out = self._inflate(self._inflater.unconsumed_tail, n)
                if out:
                    return out
                continue
            if not self._pending and not self._more():
                if self._started:
                    raise _StreamError(f"truncated {self._kind} stream (it ends mid-member)")
                return b""
            data, self._pending = self._pending, b""
            out = self._inflate(data, n)
            if out:
                return out

    def _more(self) -> bool:
        self._pending = self._stream.read(READ_CHUNK)
        return bool(self._pending)

    def _inflate(self, data: bytes, n: int) -> bytes:
        self._started = True
        try:
            return self._inflater.decompress(data, n)
        except zlib.error as exc:
            raise _StreamError(f"corrupt {self._kind} stream ({exc})") from exc


def _compression(compression: str | None) -> str:
    kind = (compression or "").upper()
    if kind not in COMPRESSIONS:
        raise ValueError(f"compression must be None, '', 'GZIP' or 'ZLIB', got {compression!r}")
    return kind


def _corrupt(path: str, offset: int, what: str) -> CorruptDataError:
    return CorruptDataError(f"TFRecord {path}: record at byte offset {offset}: {what}",
                            path=path, offset=offset)
