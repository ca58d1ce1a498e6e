"""A fault-injecting TCP proxy for tests: real servers behind it, faults in between.

``FaultProxy(target)`` listens on a free 127.0.0.1 port and forwards every connection to the
target, counting bytes each way. Faults are set at runtime and apply to connections accepted
afterwards; ``times=k`` arms a fault for the next ``k`` connections, ``times=None`` for every
connection until :meth:`FaultProxy.clear`. They act per TCP connection, so with HTTP keep-alive
only the first response on a connection is delayed, and a reset or truncation hits whichever
response carries the n-th byte.

    with FaultProxy(cluster.filer_url) as proxy:
        proxy.reset_after(1000)                     # next connection: RST after 1000 bytes down
        requests.get(proxy.url + "/big")            # -> ChunkedEncodingError / ConnectionError
        assert proxy.bytes_down == 1000

The event loop runs in its own thread; :meth:`FaultProxy.close` stops it, closes every socket
and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

_READ_SIZE = 64 * 1024


@dataclass
class _Fault:
    kind: str  # "reset" | "truncate" | "delay"
    value: float
    remaining: int | None  # connections still to hit; None = all until cleared


@dataclass
class _Plan:
    """The faults one connection got when it was accepted."""

    delay: float = 0.0
    cut_after: int | None = None  # response bytes forwarded before the cut
    reset: bool = False  # cut with RST (True) or FIN (False)


class FaultProxy:
    """TCP proxy from ``127.0.0.1:<free port>`` to ``target`` (``http://host:port`` or
    ``(host, port)``) that counts bytes and injects faults."""

    def __init__(self, target: str | tuple[str, int]) -> None:
        if isinstance(target, str):
            parts = urlsplit(target if "//" in target else f"//{target}")
            if parts.hostname is None or parts.port is None:
                raise ValueError(f"target needs a host and a port: {target!r}")
            target = (parts.hostname, parts.port)
        self.target = target
        self.port = 0
        self.bytes_up = 0
        """Bytes forwarded from clients to the target."""
        self.bytes_down = 0
        """Bytes forwarded from the target to clients."""
        self.connections = 0
        """Connections accepted."""
        self.resets = 0
        """Connections cut by a reset or truncation fault."""
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the proxy."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ faults

    def _arm(self, kind: str, value: float, times: int | None) -> None:
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1 or None, got {times}")
        with self._lock:
            self._faults.append(_Fault(kind, value, times))

    def reset_after(self, n_bytes_down: int, times: int | None = 1) -> None:
        """Abort the client connection with a TCP RST after ``n_bytes_down`` response bytes."""
        self._arm("reset", n_bytes_down, times)

    def truncate(self, n_bytes: int, times: int | None = 1) -> None:
        """Forward only the first ``n_bytes`` response bytes of a connection, then close it
        normally (FIN)."""
        self._arm("truncate", n_bytes, times)

    def delay_first_byte(self, seconds: float, times: int | None = 1) -> None:
        """Hold the first response byte of a connection back for ``seconds``."""
        self._arm("delay", seconds, times)

    def clear(self) -> None:
        """Remove every armed fault."""
        with self._lock:
            self._faults.clear()

    def reset_counters(self) -> None:
        """Set ``bytes_up``, ``bytes_down``, ``connections`` and ``resets`` back to zero."""
        with self._lock:
            self.bytes_up = self.bytes_down = self.connections = self.resets = 0

    def _take_plan(self) -> _Plan:
        plan = _Plan()
        with self._lock:
            self.connections += 1
            for fault in self._faults:
                if fault.kind == "delay":
                    plan.delay = max(plan.delay, fault.value)
                elif plan.cut_after is None or fault.value < plan.cut_after:
                    plan.cut_after, plan.reset = int(fault.value), fault.kind == "reset"
                if fault.remaining is not None:
                    fault.remaining -= 1
            self._faults = [f for f in self._faults if f.remaining is None or f.remaining > 0]
        return plan

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultProxy:
        """Start the loop thread; returns once the proxy accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the proxy is already started")
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fault-proxy",
                                        daemon=True)
        self._thread.start()
        ready.wait()
        if self._error is not None:
            self._thread.join()
            raise RuntimeError("the proxy could not start") from self._error
        return self

    def close(self) -> None:
        """Stop accepting, close every connection and join the thread. Safe to call twice."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=10)
        if thread.is_alive():
            raise RuntimeError("the proxy thread did not stop")
        self._thread = None

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready))
        except BaseException as exc:  # reported by start()
            self._error = exc
        finally:
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    # ------------------------------------------------------------------ forwarding

    async def _accept(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(client_r, client_w, self._take_plan())
        except (ConnectionError, asyncio.CancelledError, OSError):
            pass
        finally:
            client_w.transport.abort()
            self._tasks.discard(task)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                     plan: _Plan) -> None:
        try:
            target_r, target_w = await asyncio.open_connection(*self.target)
        except OSError:
            _abort_with_rst(client_w)
            return
        client_w.transport.set_write_buffer_limits(0)  # drain() = handed to the kernel
        up = asyncio.create_task(self._pump_up(client_r, target_w))
        try:
            await self._pump_down(target_r, client_w, plan)
        finally:
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)
            target_w.transport.abort()

    async def _pump_up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(_READ_SIZE):
            writer.write(data)
            await writer.drain()
            with self._lock:
                self.bytes_up += len(data)
        if writer.can_write_eof():
            writer.write_eof()  # the client half-closed; let the response finish

    async def _pump_down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         plan: _Plan) -> None:
        sent, delay = 0, plan.delay
        while data := await reader.read(_READ_SIZE):
            if delay:
                await asyncio.sleep(delay)
                delay = 0.0
            if plan.cut_after is not None:
                data = data[: max(0, plan.cut_after - sent)]
            writer.write(data)
            await writer.drain()
            sent += len(data)
            with self._lock:
                self.bytes_down += len(data)
            if plan.cut_after is not None and sent >= plan.cut_after:
                with self._lock:
                    self.resets += 1
                if plan.reset:
                    _abort_with_rst(writer)
                return
        if writer.can_write_eof():
            writer.write_eof()
        await writer.drain()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close so that the peer gets a TCP RST (linger 0), not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
