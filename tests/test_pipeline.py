"""HTTP/1.1 pipelining (seaweed_data.core.pipeline) against a scripted server.

The real volume servers are covered by the read, fault and engine tests (small needles go
through pipelining by default); this file drives the edge cases a real server rarely shows:
answers cut short, chunked bodies, a close after an answer, garbage, silence.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest
from scripted import HANG_UP, Script, ScriptedServer, ok, open_after_fork, run_scripted

from seaweed_data.core.pipeline import Pipelines, _Connection
from seaweed_data.errors import RequestTimeoutError, TransportError, UnreachableError


def run(script: Script, body: Callable[[Pipelines, str, ScriptedServer], Awaitable[None]]) -> None:
    run_scripted(script, lambda: Pipelines(connect_timeout=2), body)


def test_pipelined_answers_come_back_in_order_on_few_connections() -> None:
    def script(target: str, n: int) -> bytes:
        if target == "/missing":
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        if target == "/chunked":
            return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n")
        return ok(target.encode() * 100)

    async def body(pipes: Pipelines, address: str, server: ScriptedServer) -> None:
        targets = [f"/{i}" for i in range(200)] + ["/missing", "/chunked"]
        answers = await asyncio.gather(*(pipes.get(address, t, {}, 5) for t in targets))
        for target, answer in zip(targets[:200], answers, strict=False):
            assert answer.status == 200 and answer.body == target.encode() * 100
        assert answers[200].status == 404 and answers[200].body == b""
        assert answers[201].body == b"abcde"
        assert answers[0].headers["content-length"] == "200"  # case-insensitive
        assert server.connections <= 4 and server.requests == 202

    run(script, body)


def test_requests_of_one_loop_iteration_leave_in_one_write(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests sent together share the connection being filled (up to twice its queue) and
    leave in one write, not one write per connection they were spread over."""
    flushes = []
    real = _Connection._flush
    monkeypatch.setattr(_Connection, "_flush", lambda c: flushes.append(len(c._outgoing))
                        or real(c))

    async def body(pipes: Pipelines, address: str, server: ScriptedServer) -> None:
        assert (await pipes.get(address, "/first", {}, 5)).body == b"/first"
        answers = await asyncio.gather(*(pipes.get(address, f"/{i}", {}, 5)
                                         for i in range(12)))
        assert [a.body for a in answers] == [f"/{i}".encode() for i in range(12)]
        assert flushes == [1, 12] and server.connections == 1

    run(lambda target, n: ok(target.encode()), body)


def test_a_connection_closed_between_answers_is_replaced_and_the_request_resent() -> None:
    def script(target: str, n: int) -> bytes | None:
        if n == 2:
            return None  # as a server closing an idle keep-alive connection
        return ok(b"fine", "Connection: close\r\n" if n == 3 else "")

    async def body(pipes: Pipelines, address: str, server: ScriptedServer) -> None:
        for _ in range(4):
            answer = await pipes.get(address, "/x", {}, 5)
            assert answer.body == b"fine"
        assert server.requests == 5 and server.connections == 3

    run(script, body)


def test_an_answer_cut_short_fails_its_request_and_the_queued_ones_are_resent() -> None:
    def script(target: str, n: int) -> bytes:
        if target == "/short":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this" + HANG_UP
        return ok(target.encode())

    async def body(pipes: Pipelines, address: str, server: ScriptedServer) -> None:
        first = asyncio.ensure_future(pipes.get(address, "/short", {}, 5))
        behind = [asyncio.ensure_future(pipes.get(address, f"/{i}", {}, 5)) for i in range(3)]
        with pytest.raises(TransportError, match="cut short"):
            await first
        assert [(await b).body for b in behind] == [b"/0", b"/1", b"/2"]

    run(script, body)


def test_silence_times_out_and_drops_the_connection() -> None:
    def script(target: str, n: int) -> bytes:
        return ok(b"late") if target != "/hang" else b""

    async def body(pipes: Pipelines, address: str, server: ScriptedServer) -> None:
        with pytest.raises(RequestTimeoutError, match=r"no answer within 0\.2s"):
            await pipes.get(address, "/hang", {}, 0.2)
        answer = await pipes.get(address, "/next", {}, 5)  # on a fresh connection
        assert answer.body == b"late" and server.connections == 2

    run(script, body)


@pytest.mark.parametrize(("answer", "match"), [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not HTTP/1.x"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n", "bad answer"),
])
def test_garbage_is_a_transport_error(answer: bytes, match: str) -> None:
    async def body(pipes: Pipelines, address: str, server: ScriptedServer) -> None:
        with pytest.raises(TransportError, match=match):
            await pipes.get(address, "/x", {}, 5)

    run(lambda target, n: answer, body)


def test_an_answer_without_length_reads_to_the_end_of_the_connection() -> None:
    async def body(pipes: Pipelines, address: str, server: ScriptedServer) -> None:
        answer = await pipes.get(address, "/x", {"Range": "bytes=0-3"}, 5)
        assert answer.body == b"until close"

    run(lambda target, n: b"HTTP/1.0 200 OK\r\n\r\nuntil close" + HANG_UP, body)


def test_unreachable_server() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> None:
        pipes = Pipelines(connect_timeout=2)
        with pytest.raises(UnreachableError, match=f"127.0.0.1:{port}"):
            await pipes.get(f"127.0.0.1:{port}", "/x", {}, 5)
        await pipes.close()

    asyncio.run(main())


def test_a_forked_child_closes_its_copies_and_the_parent_keeps_going() -> None:
    async def body(pipes: Pipelines, address: str, server: ScriptedServer) -> None:
        await asyncio.gather(*(pipes.get(address, f"/{i}", {}, 5) for i in range(20)))
        fds = [c.writer.get_extra_info("socket").fileno()
               for s in pipes._servers.values() for c in s.connections]
        assert fds
        assert open_after_fork(pipes.abandon_after_fork, fds) == 0  # every copy closed
        answer = await pipes.get(address, "/again", {}, 5)  # the parent's sockets still work
        assert answer.body == b"/again" and server.connections == len(fds)

    run(lambda target, n: ok(target.encode()), body)


def test_a_silent_server_is_dropped_even_when_the_late_request_was_abandoned() -> None:
    def script(target: str, n: int) -> bytes | list[bytes | float]:
        return [30.0] if target == "/hang" else ok(b"fresh")

    async def body(pipes: Pipelines, address: str, server: ScriptedServer) -> None:
        first = asyncio.ensure_future(pipes.get(address, "/hang", {}, 0.3))
        behind = asyncio.ensure_future(pipes.get(address, "/x", {}, 0.3))
        await asyncio.sleep(0.1)
        first.cancel()  # its caller gave up: the connection must still be dropped
        answer = await asyncio.wait_for(behind, 2)  # resent on a fresh connection
        assert answer.body == b"fresh" and server.connections == 2

    run(script, body)


def test_a_batch_keeps_at_most_its_limit_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """get_many answers every request in place, and never has more than ``limit`` of them
    waiting for their answers (the batch's share of a volume server's concurrency)."""
    in_flight: list[int] = []
    connections: list[_Connection] = []
    real = _Connection.send

    def send(c: _Connection, request: bytes, timeout: float) -> asyncio.Future[object]:
        if c not in connections:
            connections.append(c)
        future = real(c, request, timeout)
        in_flight.append(sum(len(x.waiting) for x in connections))
        return future  # type: ignore[return-value]

    monkeypatch.setattr(_Connection, "send", send)

    async def body(pipes: Pipelines, address: str, server: ScriptedServer) -> None:
        requests = [(f"/{i}", {}) for i in range(40)] + [("/missing", {})]
        answers = await pipes.get_many(address, requests, 5, limit=5)
        assert [a.body for a in answers[:40]] == [f"/{i}".encode() for i in range(40)]
        assert answers[40].status == 404
        assert max(in_flight) == 5 and len(in_flight) == 41

    def script(target: str, n: int) -> bytes:
        if target == "/missing":
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        return ok(target.encode())

    run(script, body)
