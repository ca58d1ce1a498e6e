"""Filer entries and their chunks, parsed from the filer's JSON (``?metadata=true``)."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
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

    @cached_property
    def version(self) -> str:
        """Content identity: changes whenever the file is rewritten (computed once)."""
        h = hashlib.blake2b(digest_size=12)
        h.update(f"{self.path}\0{self.size}\0{self.mtime}\0{self.md5}".encode())
        for c in self.chunks:
            h.update(f"\0{c.file_id}@{c.offset}+{c.size}".encode())
        if self.content is not None:
            h.update(self.content)
        return h.hexdigest()


def parse_entry(data: dict[str, Any], path: str = "") -> Entry:
    """An :class:`Entry` from one filer JSON object; ``path`` names it in errors."""
    try:
        full_path = data.get("FullPath") or path
        mode = int(data.get("Mode") or 0)
        chunks = tuple(parse_chunk(c) for c in data.get("chunks") or ())
        content = _b64(data.get("Content"))
        remote = data.get("Remote")
        size = int(data.get("FileSize") or 0)
        if remote:
            size = max(size, int(remote.get("remote_size") or 0))
        if not size and chunks and not any(c.is_chunk_manifest for c in chunks):
            size = max(c.stop for c in chunks)
        if content is not None:
            size = max(size, len(content))
        return Entry(
            path=full_path or "/", size=size, is_dir=bool(mode & DIRECTORY_BIT),
            mtime=_timestamp(data.get("Mtime")), mode=mode, mime=data.get("Mime") or "",
            ttl_sec=int(data.get("TtlSec") or 0), md5=data.get("Md5"), chunks=chunks,
            content=content, remote=bool(remote), extended=data.get("Extended") or {},
        )
    except (TypeError, ValueError, AttributeError, KeyError, binascii.Error) as exc:
        raise ServerError(f"malformed filer entry for {path or data.get('FullPath')!r}: "
                          f"{type(exc).__name__}: {exc}") from None


def parse_chunk(data: dict[str, Any]) -> Chunk:
    file_id = data.get("file_id") or ""
    if not file_id:
        fid = data["fid"]
        file_id = f"{int(fid['volume_id'])},{int(fid['file_key']):x}{int(fid['cookie']):08x}"
    return Chunk(
        file_id=file_id,
        offset=int(data.get("offset") or 0),
        size=int(data.get("size") or 0),
        modified_ts_ns=int(data.get("modified_ts_ns") or 0),
        etag=data.get("e_tag") or "",
        cipher_key=_b64(data.get("cipher_key")),
        is_compressed=bool(data.get("is_compressed")),
        is_chunk_manifest=bool(data.get("is_chunk_manifest")),
    )


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
    except ValueError:
        return 0.0
