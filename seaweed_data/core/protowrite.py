"""A tiny protobuf wire-format writer, and the few filer messages that writes need.

Just enough of protobuf to build a ``filer_pb.CreateEntryRequest`` by hand (no grpcio, no
generated code; see :mod:`.discovery` for why). Field numbers follow SeaweedFS's
``weed/pb/filer.proto``::

    CreateEntryRequest { string directory = 1; Entry entry = 2; bool o_excl = 3; ... }
    Entry              { string name = 1; bool is_directory = 2; repeated FileChunk chunks = 3;
                         FuseAttributes attributes = 4; ... }
    FileChunk          { string file_id = 1; int64 offset = 2; uint64 size = 3;
                         int64 modified_ts_ns = 4; string e_tag = 5; FileId fid = 7; ... }
    FileId             { uint32 volume_id = 1; uint64 file_key = 2; fixed32 cookie = 3; }
    FuseAttributes     { uint64 file_size = 1; int64 mtime = 2; uint32 file_mode = 3;
                         int64 crtime = 6; string mime = 7; int32 mtime_ns = 19;
                         int32 crtime_ns = 21; ... }
    CreateEntryResponse { string error = 1; ... }

Fields holding their default value (0, "", false) are left out, as proto3 does.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ServerError
from .discovery import iter_fields

_MASK64 = (1 << 64) - 1
COOKIE_HEX_DIGITS = 8


def varint(value: int) -> bytes:
    """Base-128 varint; negative numbers as their 64-bit two's complement (int64)."""
    value &= _MASK64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def int_field(number: int, value: int) -> bytes:
    """A varint field (int32/int64/uint32/uint64/bool); omitted when 0."""
    return varint(number << 3) + varint(value) if value else b""


def fixed32_field(number: int, value: int) -> bytes:
    """A ``fixed32`` field; omitted when 0."""
    return varint(number << 3 | 5) + (value & 0xFFFFFFFF).to_bytes(4, "little") if value else b""


def bytes_field(number: int, value: bytes, *, keep_empty: bool = False) -> bytes:
    """A length-delimited field (bytes, string, embedded message)."""
    if not value and not keep_empty:
        return b""
    return varint(number << 3 | 2) + varint(len(value)) + value


def str_field(number: int, value: str) -> bytes:
    return bytes_field(number, value.encode("utf-8"))


@dataclass(frozen=True)
class FileId:
    """A parsed SeaweedFS file id ``<volume>,<key hex><cookie: 8 hex digits>``."""

    volume_id: int
    file_key: int
    cookie: int

    @classmethod
    def parse(cls, fid: str) -> FileId:
        volume, sep, rest = fid.partition(",")
        rest = rest.split("_", 1)[0]
        if not sep or len(rest) <= COOKIE_HEX_DIGITS or not volume.isdigit():
            raise ServerError(f"malformed file id {fid!r}")
        try:
            key = int(rest[:-COOKIE_HEX_DIGITS], 16)
            cookie = int(rest[-COOKIE_HEX_DIGITS:], 16)
        except ValueError:
            raise ServerError(f"malformed file id {fid!r}") from None
        return cls(int(volume), key, cookie)

    def encode(self) -> bytes:
        return int_field(1, self.volume_id) + int_field(2, self.file_key) + \
            fixed32_field(3, self.cookie)


@dataclass(frozen=True)
class StoredChunk:
    """A chunk that is on a volume server: what the filer entry will list."""

    file_id: str
    offset: int
    size: int
    modified_ts_ns: int
    e_tag: str = ""

    def encode(self) -> bytes:
        """``FileChunk`` with both the string file id and the structured ``fid``."""
        return b"".join((
            str_field(1, self.file_id), int_field(2, self.offset), int_field(3, self.size),
            int_field(4, self.modified_ts_ns), str_field(5, self.e_tag),
            bytes_field(7, FileId.parse(self.file_id).encode(), keep_empty=True),
        ))


@dataclass(frozen=True)
class FileAttributes:
    """The ``FuseAttributes`` of a new regular file."""

    file_size: int
    mtime_ns: int
    """Nanoseconds since the epoch; also used as the creation time."""
    mode: int = 0o660
    mime: str = ""

    def encode(self) -> bytes:
        """Seconds in ``mtime``/``crtime``, the rest in ``mtime_ns``/``crtime_ns`` (older
        filers skip those fields and keep whole seconds)."""
        seconds, nanos = divmod(self.mtime_ns, 1_000_000_000)
        return b"".join((
            int_field(1, self.file_size), int_field(2, seconds), int_field(3, self.mode),
            int_field(6, seconds), str_field(7, self.mime), int_field(19, nanos),
            int_field(21, nanos),
        ))


def create_entry_request(directory: str, name: str, chunks: list[StoredChunk],
                         attributes: FileAttributes) -> bytes:
    """A serialized ``CreateEntryRequest`` for a regular file (``o_excl`` false: replace)."""
    entry = b"".join((
        str_field(1, name),
        *(bytes_field(3, chunk.encode(), keep_empty=True) for chunk in chunks),
        bytes_field(4, attributes.encode(), keep_empty=True),
    ))
    return str_field(1, directory) + bytes_field(2, entry, keep_empty=True)


def create_entry_error(reply: bytes) -> str:
    """The ``error`` of a ``CreateEntryResponse`` ("" on success)."""
    for number, wire_type, value in iter_fields(reply):
        if number == 1 and wire_type == 2 and isinstance(value, bytes):
            return value.decode("utf-8", "replace")
    return ""
