"""Batch metadata: the entries of many files of one directory from a few listing pages.

A filer listing carries every entry's chunk list, so one page of 1,000 entries replaces 1,000
metadata requests. For each directory with enough requested files we list from just before
the first requested name and stop after the last; if pages turn out to be mostly files nobody
asked for, we stop listing and let the remaining files be looked up one by one.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections import defaultdict
from collections.abc import Sequence

from ..config import Config
from ..errors import NotDirectoryError, NotFoundError
from .entry import Entry
from .filer import Filer

MIN_FILES_PER_DIRECTORY = 8
MIN_USEFUL_FRACTION = 0.05


async def prefetch_entries(filer: Filer, paths: Sequence[str],
                           config: Config) -> dict[str, Entry]:
    """Entries of as many of ``paths`` as listing can cheaply find (missing ones omitted)."""
    by_directory: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        parent, name = posixpath.split(path)
        by_directory[parent or "/"].add(name)
    jobs = [_list_range(filer, d, names, config) for d, names in by_directory.items()
            if len(names) >= MIN_FILES_PER_DIRECTORY]
    found: dict[str, Entry] = {}
    for result in await asyncio.gather(*jobs):
        found.update(result)
    return found


async def _list_range(filer: Filer, directory: str, names: set[str],
                      config: Config) -> dict[str, Entry]:
    ordered = sorted(names)
    last, stop = predecessor(ordered[0]), ordered[-1]
    found: dict[str, Entry] = {}
    limit = min(config.list_page_size, max(64, len(names) * 2))
    while True:
        try:
            entries, last, more = await filer.list_page(directory, last, limit)
        except (NotFoundError, NotDirectoryError):
            return found  # the single lookups will raise the precise error
        useful = [e for e in entries if e.name in names and not e.is_dir]
        for entry in useful:
            found[posixpath.join(directory, entry.name)] = entry
        if not more or not entries or last >= stop:
            return found
        if len(useful) < MIN_USEFUL_FRACTION * len(entries):
            return found


def predecessor(name: str) -> str:
    """A name sorting just before ``name`` (the filer lists names after ``lastFileName``)."""
    if not name:
        return ""
    code = ord(name[-1]) - 1
    if code <= 0 or 0xD800 <= code <= 0xDFFF:
        return name[:-1]
    return name[:-1] + chr(code)
