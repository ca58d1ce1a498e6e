"""The clients a ``tf.data`` source reads through: one per filer, built on first use.

A source is built in the process that defines the pipeline; its files are read by TensorFlow's
threads of whichever process iterates it. :class:`SourceClients` therefore creates no client
up front: the first read (or glob) of a filer creates its :class:`~seaweed_data.Client`, and a
client handles ``fork`` itself. Every client counts into the source's :class:`Counters`. The
clients are closed when the dataset is garbage collected (:meth:`SourceClients.owned_by`).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TypeVar
from urllib.parse import urlsplit

from ..config import Config
from ..core.client import Client
from ..core.location import has_glob, parse_location
from ..core.metrics import PROCESS, Counters
from ..errors import NotFoundError

log = logging.getLogger(__name__)

T = TypeVar("T")


class SourceClients:
    """The clients of one ``tf.data`` source, by filer; no I/O until the first read."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.counters = Counters(parent=PROCESS)
        self._lock = threading.Lock()
        self._clients: dict[str, Client] = {}

    def __repr__(self) -> str:
        return f"SourceClients({sorted(self._clients)!r})"

    def locate(self, name: str) -> tuple[Client, str]:
        """The client of ``name``'s filer and the path of ``name`` on it."""
        location = parse_location(name)
        return self.client(location.filer), location.path

    def client(self, filer: str) -> Client:
        """This source's client of ``filer`` (created on first use)."""
        with self._lock:
            client = self._clients.get(filer)
            if client is None:
                client = self._clients[filer] = Client(filer, self.config,
                                                       counters=self.counters)
            return client

    def clients(self) -> list[Client]:
        """The clients created so far."""
        with self._lock:
            return list(self._clients.values())

    def expand(self, name: str) -> list[str]:
        """``[name]``, or the files a glob matches on its filer (sorted); a glob that matches
        nothing is a :class:`~seaweed_data.NotFoundError`. Matches keep the pattern's form:
        full locations for a full pattern, bare paths for a bare one."""
        if not has_glob(name):
            return [name]
        location = parse_location(name)
        matches = self.client(location.filer).glob(location.path)
        if not matches:
            raise NotFoundError(name, "no file matches this glob")
        log.debug("%s matches %d files", name, len(matches))
        if "://" not in name:
            return matches
        parts = urlsplit(name)
        return [f"{parts.scheme}://{parts.netloc}{path}" for path in matches]

    def stats(self) -> dict[str, int]:
        """The counters of every client of this source in this process."""
        return self.counters.snapshot()

    def owned_by(self, dataset: T) -> T:
        """``dataset``, whose garbage collection closes these clients.

        TensorFlow keeps the Python functions of a pipeline (and so this object) alive for the
        life of the process; the clients' connections and caches must not stay with them. A
        dataset and whatever iterates it hold ``dataset``; a use after it is gone (e.g. a
        ``tf.function`` that kept only the graph) makes new clients."""
        weakref.finalize(dataset, self.close)
        return dataset

    def close(self) -> None:
        """Close the clients; a later read creates new ones."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()  # on the loop thread (a collection there) it does not wait
