"""Directory traversal on the filer: walk and glob, built on paginated listing.

``glob`` follows Python's :mod:`glob` rules: ``*``, ``?`` and ``[...]`` match within one path
component, ``**`` matches any number of directories, names starting with ``.`` match only a
pattern component that starts with ``.``. Results are sorted. Directories listed at one level
are listed concurrently.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import AsyncIterator
from fnmatch import fnmatchcase

from ..errors import NotFoundError
from .entry import Entry
from .filer import Filer
from .location import has_glob

LIST_CONCURRENCY = 16


async def list_dir(filer: Filer, path: str) -> list[Entry]:
    return [entry async for entry in filer.list_all(path)]


async def walk(filer: Filer, top: str) -> AsyncIterator[tuple[str, list[str], list[str]]]:
    """Like :func:`os.walk` (top-down): ``(dirpath, dirnames, filenames)``."""
    pending = [top]
    while pending:
        path = pending.pop(0)
        try:
            entries = await list_dir(filer, path)
        except NotFoundError:
            if path == top:
                raise
            continue  # removed while we walked
        dirs = [e.name for e in entries if e.is_dir]
        files = [e.name for e in entries if not e.is_dir]
        yield path, dirs, files
        pending[:0] = [posixpath.join(path, d) for d in dirs]


async def glob(filer: Filer, pattern: str) -> list[str]:
    """Sorted paths matching ``pattern`` (absolute, on this filer)."""
    parts = [p for p in pattern.split("/") if p]
    matches = await _expand(filer, "/", parts)
    return sorted(set(matches))


async def _expand(filer: Filer, base: str, parts: list[str]) -> list[str]:
    if not parts:
        return [base]
    head, rest = parts[0], parts[1:]
    if head == "**":
        return await _expand_recursive(filer, base, rest)
    if not has_glob(head):
        path = posixpath.join(base, head)
        if rest:
            return await _expand(filer, path, rest)
        return [path] if await _exists(filer, path) else []
    names = await _matching_children(filer, base, head, dirs_only=bool(rest))
    children = [posixpath.join(base, n) for n in names]
    if not rest:
        return children
    found = await _gather_bounded([_expand(filer, c, rest) for c in children])
    return [m for group in found for m in group]


async def _expand_recursive(filer: Filer, base: str, rest: list[str]) -> list[str]:
    dirs: list[str] = []
    try:
        async for dirpath, _dirnames, _files in walk(filer, base):
            if not posixpath.basename(dirpath).startswith(".") or dirpath == base:
                dirs.append(dirpath)
    except NotFoundError:
        return []
    if not rest:
        return dirs
    found = await _gather_bounded([_expand(filer, d, rest) for d in dirs])
    return [m for group in found for m in group]


async def _matching_children(filer: Filer, base: str, pattern: str,
                             dirs_only: bool) -> list[str]:
    try:
        entries = await list_dir(filer, base)
    except (NotFoundError, NotADirectoryError):
        return []
    return [e.name for e in entries
            if fnmatchcase(e.name, pattern) and (not dirs_only or e.is_dir)
            and (pattern.startswith(".") or not e.name.startswith("."))]


async def _exists(filer: Filer, path: str) -> bool:
    try:
        await filer.entry(path)
    except NotFoundError:
        return False
    return True


async def _gather_bounded(coros: list[object]) -> list[list[str]]:
    semaphore = asyncio.Semaphore(LIST_CONCURRENCY)

    async def one(coro: object) -> list[str]:
        async with semaphore:
            return await coro  # type: ignore[misc, no-any-return]

    return await asyncio.gather(*(one(c) for c in coros))
