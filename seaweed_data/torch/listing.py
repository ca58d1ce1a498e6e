"""Listing an image folder the way torchvision's ``make_dataset`` does, concurrently.

Class folders are the sorted sub-directories of the root; within a class, directories come in
sorted order of their full path and files sorted by name (``sorted(os.walk(...))``). Every
class is walked concurrently; each listing page brings a thousand entries with their chunk
lists, so the samples need no further metadata. Each entry's content identity
(:attr:`Entry.version`, a hash the cache keys carry) is computed here, once: DataLoader workers
inherit it instead of each hashing the whole listing again (every epoch, without
``persistent_workers``).
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Callable

from tqdm import tqdm

from ..core.aclient import AsyncClient
from ..core.client import Client
from ..core.entry import Entry

PROGRESS_MIN_CLASSES = 50


def list_image_folder(client: Client, root: str, is_valid: Callable[[str], bool],
                      allow_empty: bool) -> tuple[list[str], dict[str, int], list[Entry],
                                                  list[int]]:
    """``(classes, class_to_idx, entries, targets)`` of the folder at ``root``."""
    core = client._async()
    classes = sorted(e.name for e in client._run(core.listdir(root)) if e.is_dir)
    if not classes:
        raise FileNotFoundError(f"Couldn't find any class folder in {root}.")
    class_to_idx = {name: i for i, name in enumerate(classes)}
    per_class = client._run(_walk_classes(core, root, classes))
    entries: list[Entry] = []
    targets: list[int] = []
    empty = []
    for name, files in zip(classes, per_class, strict=True):
        valid = [e for e in files if is_valid(e.path)]
        if not valid:
            empty.append(name)
        entries += valid
        targets += [class_to_idx[name]] * len(valid)
    if empty and not allow_empty:
        raise FileNotFoundError(
            f"Found no valid file for the classes {', '.join(sorted(empty))} in {root}.")
    for entry in entries:
        _ = entry.version  # hashed once, here: workers inherit it
    return classes, class_to_idx, entries, targets


async def _walk_classes(core: AsyncClient, root: str, classes: list[str]) -> list[list[Entry]]:
    # Only a bar that shows is created: even a disabled one may start tqdm's monitor thread.
    bar = (tqdm(total=len(classes), desc=f"listing {root}", unit="class")
           if len(classes) >= PROGRESS_MIN_CLASSES else None)
    semaphore = asyncio.Semaphore(16)

    async def one(name: str) -> list[Entry]:
        async with semaphore:
            files = await _walk_files(core, posixpath.join(root, name))
        if bar is not None:
            bar.update()
        return files

    try:
        return list(await asyncio.gather(*(one(name) for name in classes)))
    finally:
        if bar is not None:
            bar.close()


async def _walk_files(core: AsyncClient, top: str) -> list[Entry]:
    """Files under ``top`` in ``sorted(os.walk(top))`` order; each level listed concurrently."""
    by_directory: dict[str, list[Entry]] = {}
    level = [top]
    while level:
        listings = await asyncio.gather(*(core.listdir(d) for d in level))
        next_level: list[str] = []
        for directory, listed in zip(level, listings, strict=True):
            by_directory[directory] = sorted((e for e in listed if not e.is_dir),
                                             key=lambda e: e.name)
            next_level += [posixpath.join(directory, e.name) for e in listed if e.is_dir]
        level = next_level
    return [e for directory in sorted(by_directory) for e in by_directory[directory]]
