"""Locations: ``seaweedfs://HOST:PORT/a/b``, ``http(s)://HOST:PORT/a/b`` or a bare ``/a/b``.

A bare path uses the filer named by ``SEAWEED_FILER`` (default ``http://127.0.0.1:8888``).
Paths are normalised (``//`` and ``.`` collapsed); ``..`` may not climb above the root.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from ..errors import InvalidLocationError

DEFAULT_FILER = "http://127.0.0.1:8888"
GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Location:
    """A filer base URL (``http://host:port``) and an absolute path on it."""

    filer: str
    path: str

    @property
    def url(self) -> str:
        return self.filer + quote_path(self.path)

    def __str__(self) -> str:
        return self.url


def default_filer() -> str:
    return normalize_filer(os.environ.get("SEAWEED_FILER") or DEFAULT_FILER)


def normalize_filer(filer: str) -> str:
    """``host:port``, ``seaweedfs://host:port`` or ``http(s)://host:port/`` -> base URL."""
    if "://" not in filer:
        filer = "http://" + filer
    parts = urlsplit(filer)
    if parts.scheme not in ("http", "https", "seaweedfs") or not parts.netloc:
        raise InvalidLocationError(f"not a filer address: {filer!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidLocationError(f"a filer address has no path: {filer!r}")
    scheme = "http" if parts.scheme == "seaweedfs" else parts.scheme
    try:
        parts.port  # noqa: B018  (validates the port)
    except ValueError as exc:
        raise InvalidLocationError(f"bad port in filer address {filer!r}") from exc
    return f"{scheme}://{parts.netloc}"


def parse_location(location: str, filer: str | None = None) -> Location:
    """Split a location into filer and path; bare paths use ``filer`` or the default."""
    if not isinstance(location, str) or not location:
        raise InvalidLocationError(f"a location must be a non-empty string, got {location!r}")
    if "://" in location:
        parts = urlsplit(location)
        if parts.scheme not in ("http", "https", "seaweedfs") or not parts.netloc:
            raise InvalidLocationError(
                f"unsupported location {location!r}: use seaweedfs://host:port/path, "
                "http(s)://host:port/path or /path")
        if parts.query or parts.fragment:
            raise InvalidLocationError(f"a location has no query or fragment: {location!r}")
        base = normalize_filer(f"{parts.scheme}://{parts.netloc}")
        return Location(base, normalize_path(parts.path or "/", location))
    if not location.startswith("/"):
        raise InvalidLocationError(f"a bare path must be absolute (start with '/'): {location!r}")
    return Location(filer or default_filer(), normalize_path(location, location))


def is_normal_path(path: str) -> bool:
    """Whether ``path`` is an absolute filer path that :func:`normalize_path` keeps as it is
    (a conservative test: a few string searches, no parsing)."""
    return (path.startswith("/") and "//" not in path and "/." not in path
            and "\x00" not in path and (len(path) == 1 or not path.endswith("/")))


def normalize_path(path: str, original: str = "") -> str:
    if "\x00" in path:
        raise InvalidLocationError(f"NUL byte in path {original or path!r}")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise InvalidLocationError(f"path climbs above the root: {original or path!r}")
            parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def quote_path(path: str) -> str:
    return quote(path, safe="/")


def parent_and_name(path: str) -> tuple[str, str]:
    parent, name = posixpath.split(path)
    return parent or "/", name


def has_glob(path: str) -> bool:
    return any(c in GLOB_CHARS for c in path)
