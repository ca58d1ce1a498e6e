"""The async core of :class:`~seaweed_data.Client`: metadata from the filer, bytes from volumes.

A read asks the filer for the entry (its chunk list, cached for ``Config.metadata_ttl``), then
fetches only the chunks the range needs, straight from the volume servers, several at once.
With no master known (none configured, discovery failed) it reads through the filer instead;
so does a remote-mounted entry. Everything here runs on the loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import TypeVar, cast
from urllib.parse import urlsplit

from lru import LRU

from ..config import Config
from ..errors import IsDirectoryError, NotFoundError, SeaweedDataError, UnreachableError
from . import listing
from .aggregate import coalesce, split
from .buffers import Fillable
from .chunks import ChunkMap, Piece, clamp_range
from .discovery import default_grpc_port, discover_masters
from .entry import Entry
from .filer import Filer
from .http import Http
from .items import ItemReads
from .metadata import prefetch_entries
from .metrics import Counters
from .needles import PIPELINED_MAX_BYTES, ChunkMissingError, NeedleReader
from .prefetch import Slot
from .volumes import NoMasterError, VolumeLocations

log = logging.getLogger(__name__)
MAX_STATS_AHEAD = 256
"""Hinted files looked up one by one when announced; later ones when prefetched."""
T = TypeVar("T")

METADATA_CACHE_ENTRIES = 65536
DISCOVERY_RETRY_SECONDS = 30.0


class AsyncClient:
    """Reads and writes one filer's namespace. Create and use it on the loop thread."""

    def __init__(self, filer: str, config: Config, counters: Counters) -> None:
        self.config = config
        self.counters = counters
        self.http = Http(config, counters)
        self.filer = Filer(filer, self.http, config)
        self.locations = VolumeLocations(self.http, self.masters, config)
        self.needles = NeedleReader(self.http, self.locations, config, counters)
        self._entries: LRU[str, tuple[float, Entry]] = LRU(METADATA_CACHE_ENTRIES)
        self._masters: list[str] | None = [config.master] if config.master else None
        self._discovered_at = float("-inf")
        self.items = ItemReads(config, counters, self.stat, self.read_entry, self._warm,
                               self._fetch_small_files)

    async def close(self) -> None:
        self.items.close()
        await self.locations.close()
        await self.http.close()

    # -- the future: hints and orders ----------------------------------------------------------

    async def set_hints(self, paths: Sequence[str], next_paths: Sequence[str] = (),
                        known: Mapping[str, Entry] | None = None, *,
                        prefetch_next: bool = True) -> None:
        await self.items.set_hints(paths, next_paths, known, prefetch_next=prefetch_next)

    async def read_entries(self, entries: Sequence[Entry],
                           found: Sequence[bytes | None] = ()) -> list[bytes]:
        """Whole files of known entries (a dataset's listing), concurrently, in order.
        ``found[i]``, when not None, is entry i's content the caller already took from the
        cache (:meth:`ItemReads.peek_leading`); it is reported as read, in order, and returned."""
        found = list(found) or [None] * len(entries)
        slots = self.items.claim_batch(entries, found)
        await self.items.fetch_at_once(entries, found, slots)
        left = [i for i, data in enumerate(found) if data is None]
        if left:
            datas = await gather_bounded([partial(self._read_claimed, entries[i], slots[i])
                                          for i in left], self.config.concurrency)
            for i, data in zip(left, datas, strict=True):
                found[i] = data
        return cast(list[bytes], found)

    async def _read_claimed(self, entry: Entry, slot: Slot | None) -> bytes:
        try:
            if entry.is_dir:
                return await self._read(entry, 0, None)  # (raises IsDirectoryError)
            return await self.items.read_claimed(entry, slot)
        except ChunkMissingError:
            return await self.read(entry.path)

    async def _fetch_small_files(self, entries: Sequence[Entry]) -> list[bytes | None]:
        """Whole files of one small plain chunk each, pipelined at once (see
        :meth:`NeedleReader.fetch_whole`); None where that went wrong."""
        if not await self.masters():
            return [None] * len(entries)
        return await self.needles.fetch_whole([(entry.chunks[0], entry.path)
                                               for entry in entries])

    async def extend_hints(self, paths: Sequence[str]) -> None:
        await self.items.extend_hints(paths)

    async def _warm(self, paths: Sequence[str]) -> dict[str, Entry]:
        """Entries of ``paths``: by listing their directories, then (files of directories
        too small to list, up to :data:`MAX_STATS_AHEAD`) one lookup each."""
        known = await prefetch_entries(self.filer, paths, self.config)
        missing = list(dict.fromkeys(p for p in paths if p not in known))[:MAX_STATS_AHEAD]
        found = await gather_bounded([partial(self._stat_quietly, p) for p in missing],
                                     self.config.concurrency)
        known.update({p: e for p, e in zip(missing, found, strict=True) if e is not None})
        for path, entry in known.items():
            self.remember(entry, path)
        return known

    async def _stat_quietly(self, path: str) -> Entry | None:
        """A hint's entry, or None: its read will raise the real error, if any."""
        try:
            return await self.stat(path)
        except SeaweedDataError as exc:
            log.debug("cannot look up hinted %s ahead of time: %s", path, exc)
            return None

    # -- masters -----------------------------------------------------------------------------

    async def masters(self) -> list[str]:
        """Master URLs: configured, else discovered from the filer (retried now and then)."""
        if self._masters is not None:
            return self._masters
        if time.monotonic() - self._discovered_at < DISCOVERY_RETRY_SECONDS:
            return []
        self._discovered_at = time.monotonic()
        parts = urlsplit(self.filer.base)
        host = parts.hostname or "127.0.0.1"
        port = self.config.filer_grpc_port or default_grpc_port(parts.port or 80)
        try:
            if not 0 < port < 65536:  # the +10000 convention cannot hold for this filer
                raise UnreachableError(f"no gRPC port {port} (set Config.filer_grpc_port)")
            found = await discover_masters(host, port, timeout=self.config.connect_timeout)
        except SeaweedDataError as exc:
            log.warning("no master configured and discovery from the filer's gRPC port %s:%d "
                        "failed (%s); reading through the filer", host, port, exc)
            return []
        log.debug("discovered masters %s from filer %s", found, self.filer.base)
        self._masters = found
        return found

    # -- metadata ----------------------------------------------------------------------------

    async def stat(self, path: str, *, fresh: bool = False) -> Entry:
        cached = None if fresh else self._entries.get(path)
        if cached is not None and time.monotonic() - cached[0] < self.config.metadata_ttl:
            return cached[1]
        entry = await self.filer.entry(path)
        self.remember(entry, path)
        return entry

    def remember(self, entry: Entry, path: str | None = None) -> None:
        self._entries[path or entry.path] = (time.monotonic(), entry)

    def forget(self, path: str) -> None:
        self._entries.pop(path, None)

    # -- reading -----------------------------------------------------------------------------

    async def read(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """A whole file through the engine (prefetch, cache), or a range of it."""
        entry = await self.items.entry(path)
        try:
            return await self._read(entry, offset, length)
        except ChunkMissingError:
            log.info("chunks of %s changed while reading; reading its new version", path)
            entry = await self.stat(path, fresh=True)
            return await self._read(entry, offset, length)

    async def _read(self, entry: Entry, offset: int, length: int | None) -> bytes:
        start, stop = clamp_range(entry.size, offset, length)
        if start == 0 and stop == entry.size and not entry.is_dir:
            return await self.items.read(entry)
        cached = self.items.cached_slice(entry, start, stop)
        if cached is not None:
            return cached
        return await self.read_entry(entry, offset, length)

    async def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Many ``(offset, length)`` ranges of one file; near ones share a request."""
        entry = await self.items.entry(path)
        bounds = [clamp_range(entry.size, offset, length) for offset, length in ranges]
        spans = coalesce(bounds, self.config.coalesce_gap_bytes)
        data = await gather_bounded(
            [partial(self._read, entry, s.start, s.stop - s.start) for s in spans],
            self.config.chunk_concurrency)
        return split(spans, data, bounds)

    async def read_entry(self, entry: Entry, offset: int = 0,
                         length: int | None = None) -> bytes:
        """Bytes of ``entry`` from ``offset``; ``length`` None means to the end."""
        if entry.is_dir:
            raise IsDirectoryError(f"Is a directory: {entry.path!r}")
        start, stop = clamp_range(entry.size, offset, length)
        if stop <= start:
            return b""
        if entry.content is not None and not entry.chunks:
            return entry.content[start:stop]
        if (entry.remote and not entry.chunks) or not await self.masters():
            return await self.filer.read(entry.path, start, stop)
        if entry.has_manifest:
            entry = await self.filer.entry(entry.path, resolve_manifest=True)
        try:
            return await self._read_pieces(entry, plan_read(entry, start, stop))
        except NoMasterError:
            return await self.filer.read(entry.path, start, stop)

    async def _read_pieces(self, entry: Entry, plan: list[Piece]) -> bytes:
        total = sum(piece.size for piece in plan)
        if total > PIPELINED_MAX_BYTES:  # received in place, not joined from pieces
            result = Fillable(total)
            view, base = result.view, plan[0].start
            await gather_bounded([partial(self._read_piece_into, entry, piece,
                                          view[piece.start - base:piece.stop - base])
                                  for piece in plan], self.config.chunk_concurrency)
            return result.result()
        if len(plan) == 1:
            parts = await self._read_piece(entry, plan[0])
        else:
            pieces = await gather_bounded([partial(self._read_piece, entry, p) for p in plan],
                                          self.config.chunk_concurrency)
            parts = [part for piece_parts in pieces for part in piece_parts]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_piece(self, entry: Entry, piece: Piece) -> list[bytes]:
        if piece.chunk is None:
            return [bytes(piece.size)]
        start = piece.chunk_start
        return await self.needles.read(piece.chunk, start, start + piece.size, entry.path)

    async def _read_piece_into(self, entry: Entry, piece: Piece, into: memoryview) -> None:
        if piece.chunk is None:  # a hole
            into[:] = bytes(len(into))
        else:
            start = piece.chunk_start
            await self.needles.read_into(piece.chunk, start, start + piece.size, entry.path,
                                         into)

    async def read_many(self, paths: Sequence[str]) -> list[bytes]:
        """Whole files, fetched concurrently; results in the order of ``paths``."""
        known = await self._warm([p for p in paths if not self.items.is_hinted(p)])

        async def one(path: str) -> bytes:
            entry = known.get(path)
            if entry is None:
                return await self.read(path)
            try:
                return await self._read(entry, 0, None)
            except ChunkMissingError:
                return await self.read(path)

        return await gather_bounded([partial(one, p) for p in paths],
                                    self.config.concurrency)

    # -- namespace ---------------------------------------------------------------------------

    async def listdir(self, path: str) -> list[Entry]:
        return await listing.list_dir(self.filer, path)

    def walk(self, path: str) -> AsyncIterator[tuple[str, list[str], list[str]]]:
        return listing.walk(self.filer, path)

    async def glob(self, pattern: str) -> list[str]:
        return await listing.glob(self.filer, pattern)

    async def write(self, path: str, data: bytes) -> None:
        self.forget(path)
        await self.filer.put(path, data)
        self.counters.add("bytes_uploaded", len(data))

    async def delete(self, path: str, *, recursive: bool = False) -> None:
        await self.filer.entry(path)  # the filer answers 204 for missing paths
        self.forget(path)
        await self.filer.delete(path, recursive=recursive)

    async def move(self, source: str, target: str) -> None:
        await self.filer.entry(source)
        self.forget(source)
        self.forget(target)
        await self.filer.move(source, target)

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path, fresh=True)
        except NotFoundError:
            return False
        return True


def plan_read(entry: Entry, start: int, stop: int) -> list[Piece]:
    """The pieces of ``[start, stop)``; the common one-chunk file skips the interval math."""
    if len(entry.chunks) == 1:
        chunk = entry.chunks[0]
        if chunk.offset == 0 and chunk.size >= stop and not chunk.is_chunk_manifest:
            return [Piece(start, stop, chunk)]
    return ChunkMap(entry.chunks).plan(start, stop)


async def gather_bounded(factories: Sequence[Callable[[], Awaitable[T]]],
                         limit: int) -> list[T]:
    """Run the awaitables with at most ``limit`` in flight; results in input order.

    A fixed pool of workers pulls the next index: much cheaper than one task per item
    when there are thousands of small reads. The first error cancels the rest.
    """
    results: list[T | None] = [None] * len(factories)
    indices = iter(range(len(factories)))

    async def worker() -> None:
        for i in indices:
            results[i] = await factories[i]()

    workers = [asyncio.ensure_future(worker()) for _ in range(min(limit, len(factories)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    return results  # type: ignore[return-value]
