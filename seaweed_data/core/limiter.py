"""Concurrency limits where demand reads go before prefetches.

A :class:`PriorityLimiter` admits at most ``limit`` holders; when a slot frees up, a waiting
demand read gets it before any waiting prefetch. Whether the current task is a prefetch is
carried by a context variable, so the layers in between (chunk planning, needle reads) need not
pass it along: :func:`prefetching` marks a block of code, and tasks created inside inherit it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import AsyncIterator, Iterator

DEMAND, PREFETCH = 0, 1
_PRIORITY: contextvars.ContextVar[int] = contextvars.ContextVar("seaweed_data_priority",
                                                                default=DEMAND)


@contextlib.contextmanager
def prefetching() -> Iterator[None]:
    """Requests made inside this block (and tasks it creates) are prefetches."""
    token = _PRIORITY.set(PREFETCH)
    try:
        yield
    finally:
        _PRIORITY.reset(token)


def is_prefetch() -> bool:
    return _PRIORITY.get() == PREFETCH


class PriorityLimiter:
    """A semaphore whose waiting demand reads are served before waiting prefetches."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiters: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque())

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self._acquire(_PRIORITY.get())
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if self._free > 0 and not any(self._waiters):
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[priority].append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # we were handed a slot we will not use
            else:
                self._waiters[priority].remove(waiter)
            raise

    def _release(self) -> None:
        for queue in self._waiters:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the slot passes straight to the waiter
                    return
        self._free += 1

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiters)
