"""The format of one disk-cache entry, as appended to a pack file: a fixed header, then the
payload.

::

    offset size  field
    0      4     magic  b"SWDC"
    4      1     format version (FORMAT_VERSION)
    5      1     checksum algorithm (1: CRC-32 from zlib, 2: CRC-32C from `crc32c`)
    6      2     flags (bit 0: expires_at is set), little endian
    8      8     payload length, unsigned, little endian
    16     8     expires_at, seconds since the epoch as a float64 (0.0 when unset)
    24     4     checksum of bytes [0, 24) followed by the payload

The checksum covers the entry's key (the digest the index files it under, never stored in the
entry), the header fields and the payload: a damaged length, flag or expiry is caught just like
a damaged payload, and so is an index row that points at another key's whole, valid entry. The
length is also checked against the bytes read, so a truncated entry is caught before the
checksum is even computed.
"""

from __future__ import annotations

import importlib
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

Buffer: TypeAlias = "bytes | bytearray | memoryview"

MAGIC = b"SWDC"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sBBHQdI")
HEADER_SIZE = _HEADER.size
_CHECKED = HEADER_SIZE - 4  # the header bytes covered by the checksum (all but the checksum)
_FLAG_EXPIRES = 0x1
_KNOWN_FLAGS = _FLAG_EXPIRES

Checksum: TypeAlias = "Callable[[Buffer, int], int]"


def _available_checksums() -> dict[int, Checksum]:
    """Checksum algorithms by header id: 1 is zlib's CRC-32, 2 is CRC-32C from the `crc32c`
    package (hardware accelerated, several times faster) when it is installed."""
    found: dict[int, Checksum] = {1: zlib.crc32}
    try:
        module = importlib.import_module("crc32c")
    except ImportError:
        return found
    found[2] = module.crc32c
    return found


CHECKSUMS = _available_checksums()
CHECKSUM_ID = max(CHECKSUMS)  # what new entries are written with; any known id is read


def checksum(data: Buffer, value: int = 0, algorithm: int = CHECKSUM_ID) -> int:
    """The checksum of ``data`` continuing from ``value``, with the algorithm of that id."""
    return CHECKSUMS[algorithm](data, value)


class EntryFormatError(ValueError):
    """The bytes are not a valid entry: wrong magic, version or algorithm, bad length or
    checksum. The caller deletes such an entry and treats it as a miss."""


@dataclass(frozen=True, slots=True)
class EntryHeader:
    """The decoded header of an entry (its checksum is checked against the payload later)."""

    length: int
    expires_at: float | None
    crc: int
    algorithm: int
    prefix: bytes  # the checked header bytes, fed to the checksum before the payload


def encode_header(payload: Buffer, expires_at: float | None = None, *,
                  algorithm: int = CHECKSUM_ID, key: bytes = b"") -> bytes:
    """The header to write in front of ``payload`` stored under ``key``."""
    flags = _FLAG_EXPIRES if expires_at is not None else 0
    expiry = float(expires_at) if expires_at is not None else 0.0
    length = memoryview(payload).nbytes
    prefix = _HEADER.pack(MAGIC, FORMAT_VERSION, algorithm, flags, length, expiry, 0)
    prefix = prefix[:_CHECKED]
    crc = checksum(payload, checksum(prefix, checksum(key, 0, algorithm), algorithm), algorithm)
    return prefix + struct.pack("<I", crc)


def decode_header(raw: bytes, file_size: int | None = None) -> EntryHeader:
    """Parse and sanity-check a header; ``file_size`` (the bytes of the whole entry, when
    known) must match its length.

    Raises :class:`EntryFormatError` for anything that is not a header written by this
    version of the format.
    """
    if len(raw) < HEADER_SIZE:
        raise EntryFormatError(f"short header ({len(raw)} bytes)")
    magic, version, algorithm, flags, length, expiry, crc = _HEADER.unpack_from(raw)
    if magic != MAGIC or version != FORMAT_VERSION or algorithm not in CHECKSUMS:
        raise EntryFormatError("not an entry of this format version")
    if flags & ~_KNOWN_FLAGS or (not flags & _FLAG_EXPIRES and expiry != 0.0):
        raise EntryFormatError("unknown header flags")
    if file_size is not None and file_size != HEADER_SIZE + length:
        raise EntryFormatError(f"size {file_size} does not match the header's "
                               f"{HEADER_SIZE + length}")
    expires_at = expiry if flags & _FLAG_EXPIRES else None
    return EntryHeader(length, expires_at, crc, algorithm, bytes(raw[:_CHECKED]))


def verify_payload(header: EntryHeader, payload: Buffer, key: bytes = b"") -> None:
    """Raise :class:`EntryFormatError` unless ``payload`` is the one ``header`` describes,
    stored under ``key``."""
    view = memoryview(payload)
    if view.nbytes != header.length:
        raise EntryFormatError(f"payload is {view.nbytes} bytes, header says {header.length}")
    algorithm = header.algorithm
    start = checksum(header.prefix, checksum(key, 0, algorithm), algorithm)
    if checksum(view, start, algorithm) != header.crc:
        raise EntryFormatError("checksum mismatch")


def encode_entry(payload: Buffer, expires_at: float | None = None, *,
                 algorithm: int = CHECKSUM_ID, key: bytes = b"") -> bytes:
    """Header and payload as one byte string (tests and tools; the writer uses pwritev)."""
    return encode_header(payload, expires_at, algorithm=algorithm, key=key) + bytes(payload)


def decode_entry(raw: Buffer, key: bytes = b"") -> tuple[bytes, float | None]:
    """Payload and expiry of one whole entry's bytes (exactly its length), checked;
    :class:`EntryFormatError` for anything damaged. (The disk tier's read path: one unpack,
    one checksum pass, one copy of the payload.)"""
    view = memoryview(raw)
    if view.nbytes < HEADER_SIZE:
        raise EntryFormatError(f"short header ({view.nbytes} bytes)")
    magic, version, algorithm, flags, length, expiry, crc = _HEADER.unpack_from(view)
    crc_of = CHECKSUMS.get(algorithm)
    if magic != MAGIC or version != FORMAT_VERSION or crc_of is None:
        raise EntryFormatError("not an entry of this format version")
    if flags & ~_KNOWN_FLAGS or (not flags & _FLAG_EXPIRES and expiry != 0.0):
        raise EntryFormatError("unknown header flags")
    if view.nbytes != HEADER_SIZE + length:
        raise EntryFormatError(f"size {view.nbytes} does not match the header's "
                               f"{HEADER_SIZE + length}")
    payload = view[HEADER_SIZE:]
    if crc_of(payload, crc_of(view[:_CHECKED], crc_of(key, 0))) != crc:
        raise EntryFormatError("checksum mismatch")
    return bytes(payload), expiry if flags & _FLAG_EXPIRES else None
