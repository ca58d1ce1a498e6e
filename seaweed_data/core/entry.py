"""Filer entries and their chunks, parsed from the filer's JSON (``?metadata=true``)."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import ServerError

DIRECTORY_BIT = 1 << 31  # Go's os.ModeDir, as the filer reports ``Mode``
SYMLINK_BIT = 1 << 27


@dataclass(frozen=True)
class Chunk:
    """One piece of a file as stored on a volume server (a needle)."""

    file_id: str
    offset: int
    size: int
    modified_ts_ns: int = 0
    etag: str = ""
    cipher_key: bytes | None = None
    is_compressed: bool = False
    is_chunk_manifest: bool = False

    @property
    def volume_id(self) -> str:
        return self.file_id.split(",", 1)[0]

    @property
    def stop(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class Entry:
    """A file or directory on the filer."""

    path: str
    size: int
    is_dir: bool
    mtime: float = 0.0
    mode: int = 0
    mime: str = ""
    ttl_sec: int = 0
    md5: str | None = None
    chunks: tuple[Chunk, ...] = ()
    content: bytes | None = None
    remote: bool = False
    extended: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def has_manifest(self) -> bool:
        return any(c.is_chunk_manifest for c in self.chunks)

    @property
    def version(self) -> str:
        """Content identity: changes whenever the file is rewritten (computed once).

        Not a ``functools.cached_property``: before Python 3.12 that takes one lock shared by
        every entry, and a worker's threads reading a batch then queue on it."""
        version: str | None = self.__dict__.get("_version")
        if version is None:  # two threads may both compute it: the same value
            version = self._content_identity()
            object.__setattr__(self, "_version", version)
        return version

    def _content_identity(self) -> str:
        h = hashlib.blake2b(digest_size=12)
        h.update(f"{self.path}\0{self.size}\0{self.mtime}\0{self.md5}".encode())
        for c in self.chunks:
            h.update(f"\0{c.file_id}@{c.offset}+{c.size}".encode())
        if self.content is not None:
            h.update(self.content)
        return h.hexdigest()


def parse_entry(data: dict[str, Any], path: str = "") -> Entry:
    """An :class:`Entry` from one filer JSON object; ``path`` names it in errors.

    Fields of the wrong type (a path that is no string, a negative size, chunks that are no
    list of objects, ...) are a :class:`ServerError`, never an entry the engine trips over.
    """
    try:
        if not isinstance(data, dict):
            raise TypeError(f"an entry is a JSON object, got {type(data).__name__}")
        full_path = _text(data, "FullPath") or path
        mode = _count(data, "Mode")
        chunks = tuple(parse_chunk(c) for c in _items(data, "chunks"))
        content = _b64(data.get("Content"))
        remote = data.get("Remote")
        size = _count(data, "FileSize")
        if remote:
            if not isinstance(remote, dict):
                raise TypeError(f"Remote is {type(remote).__name__}, not an object")
            size = max(size, _count(remote, "remote_size"))
        if not size and chunks and not any(c.is_chunk_manifest for c in chunks):
            size = max(c.stop for c in chunks)
        if content is not None:
            size = max(size, len(content))
        extended = data.get("Extended") or {}
        if not isinstance(extended, dict):
            raise TypeError(f"Extended is {type(extended).__name__}, not an object")
        return Entry(
            path=full_path or "/", size=size, is_dir=bool(mode & DIRECTORY_BIT),
            mtime=_timestamp(data.get("Mtime")), mode=mode, mime=_text(data, "Mime"),
            ttl_sec=_count(data, "TtlSec"), md5=_text(data, "Md5") or None, chunks=chunks,
            content=content, remote=bool(remote), extended=extended,
        )
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError,
            binascii.Error) as exc:
        named = data.get("FullPath") if isinstance(data, dict) else None
        raise ServerError(f"malformed filer entry for {path or named!r}: "
                          f"{type(exc).__name__}: {exc}") from None


def parse_chunk(data: dict[str, Any]) -> Chunk:
    if not isinstance(data, dict):
        raise TypeError(f"a chunk is a JSON object, got {type(data).__name__}")
    file_id = _text(data, "file_id")
    if not file_id:
        fid = data["fid"]
        if not isinstance(fid, dict):
            raise TypeError(f"fid is {type(fid).__name__}, not an object")
        file_id = (f"{_count(fid, 'volume_id')},{_count(fid, 'file_key'):x}"
                   f"{_count(fid, 'cookie'):08x}")
    return Chunk(
        file_id=file_id,
        offset=_count(data, "offset"),
        size=_count(data, "size"),
        modified_ts_ns=_count(data, "modified_ts_ns"),
        etag=_text(data, "e_tag"),
        cipher_key=_b64(data.get("cipher_key")),
        is_compressed=bool(data.get("is_compressed")),
        is_chunk_manifest=bool(data.get("is_chunk_manifest")),
    )


def parse_listing(body: dict[str, Any], directory: str) -> tuple[list[Entry], str, bool]:
    """One page of a filer listing (``GET /dir/?limit=``): its entries, the last file name
    and whether more pages follow; :class:`ServerError` if the JSON is not such a page."""
    raw = body.get("Entries") or []
    if not isinstance(raw, list):
        raise ServerError(f"malformed filer listing of {directory!r}: Entries is "
                          f"{type(raw).__name__}, not a list")
    try:
        entries = [parse_entry(e) for e in raw]
    except ServerError as exc:
        raise ServerError(f"malformed filer listing of {directory!r}: {exc}") from None
    last = body.get("LastFileName") or ""
    if not isinstance(last, str):
        raise ServerError(f"malformed filer listing of {directory!r}: LastFileName is "
                          f"{type(last).__name__}, not a string")
    return entries, last, bool(body.get("ShouldDisplayLoadMore")) and bool(entries)


def _count(data: dict[str, Any], key: str) -> int:
    """A non-negative integer field (absent, null, 0 or "": 0); ValueError otherwise."""
    value = data.get(key)
    if value is None or value == "" or value is False:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (
            isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{key} is not an integer: {value!r}")
    number = int(value)
    if number < 0:
        raise ValueError(f"{key} is negative: {number}")
    return number


def _text(data: dict[str, Any], key: str) -> str:
    """A string field (absent or null: ""); TypeError otherwise."""
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{key} is {type(value).__name__}, not a string")
    return value


def _items(data: dict[str, Any], key: str) -> list[Any]:
    """A list field (absent or null: empty); TypeError otherwise."""
    value = data.get(key) or []
    if not isinstance(value, list):
        raise TypeError(f"{key} is {type(value).__name__}, not a list")
    return value


def _b64(value: str | None) -> bytes | None:
    return base64.b64decode(value) if value else None


def _timestamp(value: str | None) -> float:
    if not value:
        return 0.0
    # Go prints nanoseconds; Python parses microseconds at most.
    head, dot, rest = value.partition(".")
    if dot:
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits):]
        value = f"{head}.{digits[:6]}{zone}"
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        return 0.0
