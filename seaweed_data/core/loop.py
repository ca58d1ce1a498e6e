"""One event-loop thread per process, and the explicit bridge that runs coroutines on it.

Every async object of seaweed_data (aiohttp sessions, locks, caches in flight) lives on this
loop. Sync callers use :func:`run`. The thread starts when the first user acquires it and stops
when the last one releases it, so a closed client leaves no thread behind. After ``fork`` the
child starts with no loop at all: the parent's thread does not exist there, and anything bound
to the parent's loop is dropped by its owner (see ``register_at_fork`` below and the pid checks
in the clients).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class LoopThread:
    """A daemon thread running an asyncio loop, reference-counted by its users."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._users = 0
        self._cleanups: set[concurrent.futures.Future[object]] = set()

    def acquire(self) -> asyncio.AbstractEventLoop:
        """Register one user; start the thread if it is not running."""
        with self._lock:
            self._users += 1
            if self._loop is None:
                self._start()
            assert self._loop is not None
            return self._loop

    def release(self) -> None:
        """Unregister one user; the last one out stops and joins the thread."""
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._loop is None:
                return
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join()
            loop.close()

    def release_soon(self, coro: Coroutine[Any, Any, object]) -> None:
        """Run ``coro`` (a cleanup) on the loop and unregister one user, without waiting or
        joining anything: safe in a finalizer, which may run while this thread holds a lock
        (the import lock, say) that the loop thread needs."""
        with self._lock:
            loop = self._loop
            self._users -= 1
            last = self._users <= 0 and loop is not None
            if last:
                self._loop = self._thread = None
        if loop is None:
            coro.close()
            return
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        self._cleanups.add(future)
        future.add_done_callback(self._cleanups.discard)
        if last:  # stop once the cleanup is done; the daemon thread then ends by itself
            future.add_done_callback(lambda _: loop.call_soon_threadsafe(loop.stop))

    def wait_for_cleanups(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for the cleanups :meth:`release_soon` handed
        over: at interpreter exit the daemon thread would be frozen in the middle of them."""
        concurrent.futures.wait(list(self._cleanups), timeout)

    @property
    def users(self) -> int:
        return self._users

    def is_current(self) -> bool:
        """Whether the calling thread is the loop thread (which must never wait for itself)."""
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop thread and wait for its result from this thread."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("seaweed_data loop thread is not running (client closed?)")
        if self.is_current():
            coro.close()
            raise RuntimeError("blocking seaweed_data call made from its own event loop; "
                               "use the async API (await) there")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except (KeyboardInterrupt, concurrent.futures.TimeoutError):
            future.cancel()
            raise

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the loop thread without waiting for it."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("seaweed_data loop thread is not running (client closed?)")
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def post(self, fn: Callable[..., object], *args: object) -> None:
        """Run the plain function ``fn(*args)`` on the loop thread soon; do not wait for it.
        Calls run in the order they were posted, also relative to the first step of the
        coroutines of :meth:`run` and :meth:`submit`."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("seaweed_data loop thread is not running (client closed?)")
        # A coroutine sent over starts one loop iteration after its task is made: queue
        # ``fn`` the same way, or it would overtake a coroutine sent just before it.
        loop.call_soon_threadsafe(loop.call_soon, _logged, fn, *args)

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=main, name="seaweed_data-loop", daemon=True)
        thread.start()
        ready.wait()
        self._loop, self._thread = loop, thread

    def _reset_after_fork(self) -> None:
        # The parent's loop thread does not exist in the child; its loop object may hold
        # a locked selector. Forget it without touching it.
        self._lock = threading.RLock()
        self._loop = self._thread = None
        self._users = 0
        self._cleanups = set()


def _logged(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except Exception:  # a posted call has nobody waiting for it: say what went wrong
        log.exception("seaweed_data: %r failed on the loop thread", fn)


LOOP = LoopThread()
"""The process-wide loop thread."""

os.register_at_fork(after_in_child=LOOP._reset_after_fork)
