"""Single-flight fetches: readers of one block while it is in flight share its one fetch.

The reader that starts a fetch runs it in its own task (a task per fetch cost ~5 µs of CPU
per file); a reader of the same block that comes meanwhile waits for its outcome. Should the
first reader give up (cancelled: a prefetch that fell out of the window), a reader waiting for
it is not cancelled: it fetches the block itself. A batch registers its fetches at once
(:meth:`Flights.begin`) and ends them together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence

from .prefetch import being_cancelled


class _Flight:
    """One fetch in flight; ``outcome`` is made when a second reader joins it."""

    outcome: asyncio.Future[bytes] | None = None

    def settle(self, data: bytes | None, error: BaseException | None) -> None:
        """Hand the outcome to the readers waiting; no data and no error (or a
        cancellation) sends them to fetch it themselves."""
        outcome = self.outcome
        if outcome is None or outcome.done():
            return
        if data is not None:
            outcome.set_result(data)
        elif error is None or isinstance(error, asyncio.CancelledError):
            outcome.cancel()
        else:
            outcome.set_exception(error)
            outcome.exception()  # (seen: a reader that left meanwhile does not log it)


class Batch:
    """The fetches of a batch, registered together (:meth:`Flights.begin`)."""

    def __init__(self, flights: Flights, keys: Sequence[Hashable]) -> None:
        self._flights = flights
        self._keys = list(keys)
        self._each = [_Flight() for _ in self._keys]
        flights.inflight.update(zip(self._keys, self._each, strict=True))

    def end(self, datas: Sequence[bytes | None] | None,
            error: BaseException | None = None) -> None:
        """The batch is over: ``datas[i]`` for key ``i`` (None: not fetched, a waiting
        reader fetches it itself), or ``error`` for all."""
        datas = datas if datas is not None else [None] * len(self._keys)
        for key, flight, data in zip(self._keys, self._each, datas, strict=True):
            self._flights.end(key, flight)
            flight.settle(data, error)


class Flights:
    """The fetches in flight of one engine, by block key."""

    def __init__(self) -> None:
        self.inflight: dict[Hashable, _Flight] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self.inflight

    async def run(self, key: Hashable, fetch: Callable[[], Awaitable[bytes]]) -> bytes:
        """``fetch()``, or the outcome of the fetch of ``key`` already in flight."""
        while True:
            flight = self.inflight.get(key)
            if flight is None:
                return await self._first(key, fetch)
            if flight.outcome is None:
                flight.outcome = asyncio.get_running_loop().create_future()
            try:
                return await asyncio.shield(flight.outcome)
            except asyncio.CancelledError:
                if being_cancelled() or not flight.outcome.cancelled():
                    raise

    async def _first(self, key: Hashable, fetch: Callable[[], Awaitable[bytes]]) -> bytes:
        flight = self.inflight[key] = _Flight()
        try:
            data = await fetch()
        except BaseException as exc:
            self.end(key, flight)
            flight.settle(None, exc)
            raise
        self.end(key, flight)
        flight.settle(data, None)
        return data

    def begin(self, keys: Sequence[Hashable]) -> Batch:
        """Register the fetches of a batch (none of ``keys`` in flight yet)."""
        return Batch(self, keys)

    def end(self, key: Hashable, flight: _Flight) -> None:
        if self.inflight.get(key) is flight:
            del self.inflight[key]
