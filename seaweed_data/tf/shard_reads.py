"""Reading the files of a record source in the order its pipeline announces them.

The pipeline (:mod:`seaweed_data.tf.records`) numbers the file names of each iteration 0, 1,
2, ... and announces each file (:meth:`ShardReads.announce`) a few files before a reader opens
it (:meth:`ShardReads.open`). Each announced file is read one of two ways:

- **streamed**: the first ``streams`` files of an iteration (those read at once: one, or
  ``num_parallel_reads``) are opened with ``Client.open``, so records flow while the file is
  still arriving (sequential readahead);
- **prefetched**: every later file is announced to its client the moment it is announced
  here (``Client.set_hints`` of the prefetched files not read yet, with their entries: sizes
  for the byte budget, and a file the cache still holds is not fetched again), so the engine
  fetches whole files in exactly this order, a bounded number ahead. Opening one claims it
  from the engine, in the announced order even when TensorFlow's threads open files out of
  order (a parallel interleave): opening a file first claims the prefetched files announced
  before it, whose readers are about to start.

A file number that does not follow the previous one starts a new iteration (a new iterator,
a ``repeat``): what the previous iteration announced and did not read is dropped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import logging
import os
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from ..core.client import Client
from ..core.entry import Entry
from ..core.loop import LOOP
from .clients import SourceClients

log = logging.getLogger(__name__)

Claim = concurrent.futures.Future[bytes]


@dataclass(frozen=True)
class _Announced:
    name: str
    prefetched: bool


class ShardReads:
    """One source's file reads in one process (see the module docstring).

    ``streams`` files of each iteration are streamed, the others prefetched; ``prefetch=0``
    streams every file and announces none.
    """

    def __init__(self, clients: SourceClients, *, streams: int, prefetch: int) -> None:
        self._clients = clients
        self._streams = max(1, streams)
        self._prefetch = prefetch
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._last = -1
        self._streams_left = self._streams
        self._announced: dict[int, _Announced] = {}
        self._unclaimed: deque[int] = deque()  # prefetched files not claimed yet, in order
        self._claims: dict[int, Claim] = {}  # claimed early, for readers about to open them
        self._entries: dict[int, Entry] = {}  # of the prefetched files not claimed yet

    def announce(self, number: int, name: str) -> None:
        """File ``number`` of this iteration is ``name``; its reader comes soon."""
        with self._guard():
            if number <= self._last:
                self._restart()
            self._last = number
            prefetched = self._prefetch > 0 and self._streams_left <= 0
            if not prefetched:
                self._streams_left -= 1
                self._announced[number] = _Announced(name, prefetched)
                return
        client, path = self._clients.locate(name)
        entry = client.stat(path)  # outside the lock: readers keep opening meanwhile
        with self._guard():
            self._announced[number] = _Announced(name, prefetched)
            self._unclaimed.append(number)
            self._entries[number] = entry
            self._hint(client)

    def _hint(self, client: Client) -> None:
        """Give ``client`` the order of the prefetched files not claimed yet, with their
        entries (sizes for the byte budget; a file still cached is not fetched again).
        Started, not awaited, under the lock: the engine sees hints and claims in order."""
        paths, known = [], {}
        for number in self._unclaimed:
            owner, path = self._clients.locate(self._announced[number].name)
            if owner is client:
                paths.append(path)
                known[path] = self._entries[number]
        client.set_hints(paths, known=known, background=True)

    @contextlib.contextmanager
    def open(self, number: int, name: str) -> Iterator[IO[bytes]]:
        """A binary stream of file ``number`` (``name``), streamed or prefetched."""
        claim = self._claim(number, name)
        if claim is not None:
            self._clients.counters.add("tf_files_prefetched")
            yield io.BytesIO(claim.result())
            return
        self._clients.counters.add("tf_files_streamed")
        client, path = self._clients.locate(name)
        with client.open(path) as stream:
            yield stream

    def _claim(self, number: int, name: str) -> Claim | None:
        """The engine's read of a prefetched file, claimed in the announced order; None for
        a streamed file (or one never announced)."""
        with self._guard():
            announced = self._announced.pop(number, None)
            if announced is None or not announced.prefetched:
                return None
            early = self._claims.pop(number, None)
            if early is not None:
                return early
            while self._unclaimed:
                first = self._unclaimed.popleft()
                if first == number:
                    break
                earlier = self._announced.get(first)
                if earlier is not None:
                    self._claims[first] = self._read(first, earlier.name)
            return self._read(number, name)

    def _read(self, number: int, name: str) -> Claim:
        self._entries.pop(number, None)
        client, path = self._clients.locate(name)
        return start_read(client, path)

    def _restart(self) -> None:
        log.debug("a new iteration starts: dropping %d announced files",
                  len(self._announced))
        for claim in self._claims.values():
            claim.cancel()
        self._forget()
        for client in self._clients.clients():
            client.set_hints([])

    def _forget(self) -> None:
        self._announced, self._unclaimed, self._claims, self._entries = {}, deque(), {}, {}
        self._streams_left = self._streams

    def _guard(self) -> threading.Lock:
        """The lock of this process's state. After ``fork`` the parent's claims (bound to its
        loop) and its lock (maybe held by a thread that does not exist here) are dropped."""
        if self._pid != os.getpid():
            self._pid, self._last, self._lock = os.getpid(), -1, threading.Lock()
            self._forget()
        return self._lock


def start_read(client: Client, path: str) -> Claim:
    """Start ``client.read(path)`` (a whole-file read through the engine: prefetched, cached)
    on the loop thread. Reads started one after the other reach the engine in that order."""
    core = client._async()
    return LOOP.submit(core.read(client.path(path)))
