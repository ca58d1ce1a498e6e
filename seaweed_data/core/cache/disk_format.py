"""On-disk layout of one disk-cache entry: a fixed header followed by the payload.

::

    offset size  field
    0      4     magic  b"SWDC"
    4      1     format version (FORMAT_VERSION)
    5      1     checksum algorithm (CHECKSUM_ID)
    6      2     flags (bit 0: expires_at is set), little endian
    8      8     payload length, unsigned, little endian
    16     8     expires_at, seconds since the epoch as a float64 (0.0 when unset)
    24     4     checksum of bytes [0, 24) followed by the payload

The checksum covers the header fields as well as the payload, so a damaged length, flag or
expiry is caught just like a damaged payload; the length is also checked against the file
size, so a truncated or extended file is caught before the checksum is even computed.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAGIC = b"SWDC"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sBBHQdI")
HEADER_SIZE = _HEADER.size
_CHECKED = HEADER_SIZE - 4  # the header bytes covered by the checksum (all but the checksum)
_FLAG_EXPIRES = 0x1
_KNOWN_FLAGS = _FLAG_EXPIRES

# The checksum in use. With the `crc32c` package installed this becomes
# ``crc32c.crc32c(data, value)`` (hardware CRC-32C) and CHECKSUM_ID 2; entries written with
# another algorithm then read as corrupt and are refetched once, which is safe.
CHECKSUM_ID = 1


def checksum(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32 of ``data``, continuing from ``value`` (the one place to switch algorithms)."""
    return zlib.crc32(data, value)


class EntryFormatError(ValueError):
    """The bytes are not a valid entry: wrong magic, version or algorithm, bad length or
    checksum. The caller deletes such an entry and treats it as a miss."""


@dataclass(frozen=True, slots=True)
class EntryHeader:
    """The decoded header of an entry (its checksum is checked against the payload later)."""

    length: int
    expires_at: float | None
    crc: int
    prefix: bytes  # the checked header bytes, fed to the checksum before the payload


def encode_header(payload: bytes | bytearray | memoryview,
                  expires_at: float | None = None) -> bytes:
    """The header to write in front of ``payload``."""
    flags = _FLAG_EXPIRES if expires_at is not None else 0
    expiry = float(expires_at) if expires_at is not None else 0.0
    length = memoryview(payload).nbytes
    prefix = _HEADER.pack(MAGIC, FORMAT_VERSION, CHECKSUM_ID, flags, length, expiry, 0)
    prefix = prefix[:_CHECKED]
    return prefix + struct.pack("<I", checksum(payload, checksum(prefix)))


def decode_header(raw: bytes, file_size: int | None = None) -> EntryHeader:
    """Parse and sanity-check a header; ``file_size`` (when known) must match its length.

    Raises :class:`EntryFormatError` for anything that is not a header written by this
    version of the format.
    """
    if len(raw) < HEADER_SIZE:
        raise EntryFormatError(f"short header ({len(raw)} bytes)")
    magic, version, algorithm, flags, length, expiry, crc = _HEADER.unpack_from(raw)
    if magic != MAGIC or version != FORMAT_VERSION or algorithm != CHECKSUM_ID:
        raise EntryFormatError("not an entry of this format version")
    if flags & ~_KNOWN_FLAGS or (not flags & _FLAG_EXPIRES and expiry != 0.0):
        raise EntryFormatError("unknown header flags")
    if file_size is not None and file_size != HEADER_SIZE + length:
        raise EntryFormatError(f"size {file_size} does not match the header's "
                               f"{HEADER_SIZE + length}")
    expires_at = expiry if flags & _FLAG_EXPIRES else None
    return EntryHeader(length, expires_at, crc, bytes(raw[:_CHECKED]))


def verify_payload(header: EntryHeader, payload: bytes | bytearray | memoryview) -> None:
    """Raise :class:`EntryFormatError` unless ``payload`` is the one ``header`` describes."""
    view = memoryview(payload)
    if view.nbytes != header.length:
        raise EntryFormatError(f"payload is {view.nbytes} bytes, header says {header.length}")
    if checksum(view, checksum(header.prefix)) != header.crc:
        raise EntryFormatError("checksum mismatch")


def encode_entry(payload: bytes | bytearray | memoryview,
                 expires_at: float | None = None) -> bytes:
    """Header and payload as one byte string (tests and tools; the writer uses writev)."""
    return encode_header(payload, expires_at) + bytes(payload)


def decode_entry(raw: bytes | bytearray | memoryview) -> tuple[bytes, float | None]:
    """Payload and expiry of a whole entry file's bytes, checked; :class:`EntryFormatError`
    for anything damaged."""
    view = memoryview(raw)
    header = decode_header(bytes(view[:HEADER_SIZE]), file_size=view.nbytes)
    payload = view[HEADER_SIZE:]
    verify_payload(header, payload)
    return bytes(payload), header.expires_at
