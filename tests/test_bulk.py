"""Large GETs received in place (seaweed_data.core.bulk) against a scripted server.

Real volume servers are covered by every test reading a file over 256 KiB (the read, kinds,
checkpoint, TFRecord and fault tests); this file drives what a real server rarely shows: an
answer in many pieces with pauses, error statuses, a server that ignores Range, answers cut
short, silence, garbage, idle connections closed by the server, cancellation and fork.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest
from scripted import HANG_UP, Script, ScriptedServer, ok, open_after_fork, run_scripted

from seaweed_data.core import buffers
from seaweed_data.core.bulk import BulkGets
from seaweed_data.errors import RequestTimeoutError, TransportError, UnreachableError

BODY = bytes(range(256)) * 4096  # 1 MiB


def run(script: Script, body: Callable[[BulkGets, str, ScriptedServer], Awaitable[None]]) -> None:
    run_scripted(script, lambda: BulkGets(connect_timeout=2), body)


def buffer(size: int = len(BODY)) -> memoryview:
    return memoryview(bytearray(b"\xee" * size))


def test_a_body_in_pieces_lands_in_the_buffer_on_one_kept_alive_connection() -> None:
    def script(target: str, n: int) -> list[bytes | float]:
        answer = ok(BODY)
        return [answer[:10], 0.01, answer[10:70_000], 0.01, answer[70_000:]]

    async def body(bulk: BulkGets, address: str, server: ScriptedServer) -> None:
        for _ in range(3):
            into = buffer()
            answer = await bulk.get(address, "/3,01", {"X-A": "1"}, 5, into)
            assert answer.status == 200 and answer.body is None
            assert into == BODY
        assert server.requests == 3 and server.connections == 1

    run(script, body)


def test_an_answer_that_does_not_fit_comes_back_whole_and_leaves_the_buffer_alone() -> None:
    def script(target: str, n: int) -> bytes:
        if target == "/missing":
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"
        return ok(BODY)  # a Range the server ignored: the whole needle

    async def body(bulk: BulkGets, address: str, server: ScriptedServer) -> None:
        into = buffer(100)
        missing = await bulk.get(address, "/missing", {}, 5, into)
        assert (missing.status, missing.body) == (404, b"not found")
        whole = await bulk.get(address, "/x", {"Range": "bytes=0-99"}, 5, into)
        assert whole.status == 200 and whole.body == BODY
        assert into == b"\xee" * 100
        assert missing.headers["content-length"] == "9" and server.connections == 1

    run(script, body)


def test_an_answer_cut_short_is_a_transport_error_and_not_resent() -> None:
    def script(target: str, n: int) -> bytes:
        return ok(BODY)[:500_000] + HANG_UP

    async def body(bulk: BulkGets, address: str, server: ScriptedServer) -> None:
        with pytest.raises(TransportError, match="cut short"):
            await bulk.get(address, "/x", {}, 5, buffer())
        assert server.requests == 1

    run(script, body)


def test_an_idle_connection_the_server_closed_is_replaced_and_the_request_resent() -> None:
    def script(target: str, n: int) -> bytes | None:
        if n == 2:
            return None  # as a server closing an idle keep-alive connection
        return ok(BODY, "Connection: close\r\n" if n == 3 else "")

    async def body(bulk: BulkGets, address: str, server: ScriptedServer) -> None:
        for _ in range(4):
            into = buffer()
            await bulk.get(address, "/x", {}, 5, into)
            assert into == BODY
        assert server.requests == 5 and server.connections == 3

    run(script, body)


def test_silence_times_out_but_a_slow_steady_body_does_not() -> None:
    answer = ok(BODY)

    def script(target: str, n: int) -> bytes | list[bytes | float]:
        if target == "/hang":
            return answer[:1000]
        return [piece for i in range(0, len(answer), 100_000)
                for piece in (answer[i:i + 100_000], 0.05)]

    async def body(bulk: BulkGets, address: str, server: ScriptedServer) -> None:
        with pytest.raises(RequestTimeoutError, match=r"GET http://.*/hang: no data for 0\.4s"):
            await bulk.get(address, "/hang", {}, 0.4, buffer())
        into = buffer()
        await bulk.get(address, "/slow", {}, 0.4, into)  # 0.55 s in all, never 0.4 s silent
        assert into == BODY and server.connections == 2

    run(script, body)


@pytest.mark.parametrize(("answer", "match"), [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not HTTP/1.x"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
     "without a Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabcdef", "more than the answer's"),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 70_000, "head over"),
])
def test_garbage_is_a_transport_error(answer: bytes, match: str) -> None:
    async def body(bulk: BulkGets, address: str, server: ScriptedServer) -> None:
        with pytest.raises(TransportError, match=match):
            await bulk.get(address, "/x", {}, 5, buffer())

    run(lambda target, n: answer, body)


def test_cancelled_request_drops_its_connection() -> None:
    def script(target: str, n: int) -> bytes | list[bytes | float]:
        return [ok(BODY)[:100], 0.5, ok(BODY)[100:]] if n == 1 else ok(BODY)

    async def body(bulk: BulkGets, address: str, server: ScriptedServer) -> None:
        first = asyncio.ensure_future(bulk.get(address, "/x", {}, 5, buffer()))
        await asyncio.sleep(0.2)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        into = buffer()
        await bulk.get(address, "/y", {}, 5, into)
        assert into == BODY and server.connections == 2  # the first one was not reused

    run(script, body)


def test_unreachable_server() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> None:
        bulk = BulkGets(connect_timeout=2)
        with pytest.raises(UnreachableError, match=f"127.0.0.1:{port}"):
            await bulk.get(f"127.0.0.1:{port}", "/x", {}, 5, buffer())
        await bulk.close()

    asyncio.run(main())


def test_a_forked_child_closes_its_copies_and_the_parent_keeps_going() -> None:
    async def body(bulk: BulkGets, address: str, server: ScriptedServer) -> None:
        await asyncio.gather(*(bulk.get(address, "/x", {}, 5, buffer()) for _ in range(3)))
        fds = [c.transport.get_extra_info("socket").fileno()
               for c in bulk._connections() if c.transport is not None]
        assert len(fds) == 3
        assert open_after_fork(bulk.abandon_after_fork, fds) == 0  # every copy closed
        into = buffer()
        await bulk.get(address, "/x", {}, 5, into)
        assert into == BODY and server.connections == 3

    run(lambda target, n: ok(BODY), body)


def test_bytes_nobody_asked_for_drop_the_connection() -> None:
    def script(target: str, n: int) -> list[bytes | float]:
        return [ok(BODY), 0.05, ok(b"unasked")] if n == 1 else [ok(BODY)]

    async def body(bulk: BulkGets, address: str, server: ScriptedServer) -> None:
        await bulk.get(address, "/x", {}, 5, buffer())
        await asyncio.sleep(0.2)  # the extra answer arrives while the connection is idle
        into = buffer()
        await bulk.get(address, "/y", {}, 5, into)
        assert into == BODY and server.connections == 2

    run(script, body)


@pytest.mark.parametrize("api", ["cpython", "fallback"])
def test_fillable_bytes_are_written_in_place_and_outlive_their_owner(monkeypatch, api) -> None:
    if api == "fallback":
        monkeypatch.setattr(buffers, "_API", None)
    fillable = buffers.Fillable(6)
    fillable.view[:] = b"abcdef"
    fillable.view[1:3] = b"XY"
    data = fillable.result()
    assert type(data) is bytes and data == b"aXYdef" and not fillable.view.readonly
    view = fillable.view
    del fillable, data
    view[:2] = b"ok"  # the storage lives as long as a view of it
    assert view.tobytes() == b"okYdef"
    assert buffers.Fillable(0).result() == b""

