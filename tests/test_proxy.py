"""The fault-injecting proxy of tests/proxy.py, in front of a real SeaweedFS filer."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import pytest
import requests
from proxy import FaultProxy

from seaweed_data.core.cluster import LocalCluster

TIMEOUT = 10
SIZE = 512 * 1024


@pytest.fixture(scope="module")
def blob(cluster: LocalCluster) -> tuple[str, bytes]:
    """A path on the filer and its content."""
    data = os.urandom(SIZE)
    path = f"/t/proxy-{os.urandom(4).hex()}/blob.bin"
    requests.put(f"{cluster.filer_url}{path}", data=data, timeout=TIMEOUT).raise_for_status()
    return path, data


@pytest.fixture
def proxy(
    cluster: LocalCluster, fault_proxy: Callable[[str | tuple[str, int]], FaultProxy]
) -> FaultProxy:
    return fault_proxy(cluster.filer_url)


def raw_get(proxy: FaultProxy, path: str) -> tuple[bytes, BaseException | None]:
    """Send one GET over a plain socket; everything received until EOF or the error."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError as exc:
            return bytes(received), exc
    return bytes(received), None


def test_forwards_and_counts_bytes(proxy: FaultProxy, blob: tuple[str, bytes]) -> None:
    path, data = blob
    assert proxy.url == f"http://127.0.0.1:{proxy.port}"
    assert requests.get(f"{proxy.url}{path}", timeout=TIMEOUT).content == data
    assert proxy.connections == 1
    assert SIZE < proxy.bytes_down < SIZE + 2000  # body plus headers
    assert 0 < proxy.bytes_up < 1000
    body = os.urandom(100_000)
    put = requests.put(f"{proxy.url}{path}.copy", data=body, timeout=TIMEOUT)
    assert put.status_code == 201
    assert proxy.bytes_up > 100_000 and proxy.connections == 2
    proxy.reset_counters()
    assert (proxy.bytes_up, proxy.bytes_down, proxy.connections) == (0, 0, 0)


def test_reset_after_cuts_one_connection_with_rst(
    proxy: FaultProxy, blob: tuple[str, bytes]
) -> None:
    path, data = blob
    proxy.reset_after(1000)
    received, error = raw_get(proxy, path)
    assert isinstance(error, ConnectionResetError)
    assert len(received) <= 1000 and proxy.bytes_down == 1000 and proxy.resets == 1
    assert requests.get(f"{proxy.url}{path}", timeout=TIMEOUT).content == data  # once only


def test_reset_after_for_the_next_k_connections(
    proxy: FaultProxy, blob: tuple[str, bytes]
) -> None:
    path, data = blob
    proxy.reset_after(5000, times=2)
    for _ in range(2):
        with pytest.raises(requests.RequestException):
            requests.get(f"{proxy.url}{path}", timeout=TIMEOUT)
    assert requests.get(f"{proxy.url}{path}", timeout=TIMEOUT).content == data
    assert proxy.connections == 3 and proxy.resets == 2


def test_truncate_closes_cleanly_after_n_bytes(
    proxy: FaultProxy, blob: tuple[str, bytes]
) -> None:
    path, data = blob
    proxy.truncate(3000)
    received, error = raw_get(proxy, path)
    assert error is None and len(received) == 3000  # an orderly FIN after exactly n bytes
    assert received.startswith(b"HTTP/1.1 200")
    _, _, body = received.partition(b"\r\n\r\n")
    assert body == data[: len(body)]
    proxy.truncate(3000)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # IncompleteRead
        requests.get(f"{proxy.url}{path}", timeout=TIMEOUT)


def test_delay_first_byte(proxy: FaultProxy, blob: tuple[str, bytes]) -> None:
    path, data = blob
    proxy.delay_first_byte(1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{proxy.url}{path}", timeout=(TIMEOUT, 0.3))
    began = time.monotonic()
    assert requests.get(f"{proxy.url}{path}", timeout=TIMEOUT).content == data
    assert time.monotonic() - began < 1.0  # the fault was for one connection
    proxy.delay_first_byte(0.3, times=None)
    for _ in range(2):
        began = time.monotonic()
        assert requests.get(f"{proxy.url}{path}", timeout=TIMEOUT).content == data
        assert time.monotonic() - began >= 0.3
    proxy.clear()
    assert requests.get(f"{proxy.url}{path}", timeout=(TIMEOUT, 0.25)).content == data


def test_the_smallest_cut_wins(proxy: FaultProxy, blob: tuple[str, bytes]) -> None:
    path, _ = blob
    proxy.truncate(4000)
    proxy.reset_after(2000)
    _, error = raw_get(proxy, path)
    assert isinstance(error, ConnectionResetError) and proxy.bytes_down == 2000


def test_unreachable_target_is_a_connection_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with FaultProxy(("127.0.0.1", port)) as proxy, pytest.raises(requests.ConnectionError):
        requests.get(proxy.url, timeout=TIMEOUT)


def test_close_joins_the_thread_and_closes_sockets(cluster: LocalCluster) -> None:
    proxy = FaultProxy(cluster.filer_url).start()
    (thread,) = [t for t in threading.enumerate() if t.name == "fault-proxy"]
    idle = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
    time.sleep(0.1)  # accepted and connected upstream
    proxy.close()
    assert not thread.is_alive()
    try:
        assert idle.recv(10) == b""  # the proxy closed our connection
    except ConnectionResetError:
        pass
    finally:
        idle.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(proxy.url, timeout=TIMEOUT)
    proxy.close()  # idempotent


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="host and a port"):
        FaultProxy("http://127.0.0.1")
    proxy = FaultProxy("127.0.0.1:1")
    with pytest.raises(ValueError, match="times"):
        proxy.reset_after(10, times=0)
    with proxy, pytest.raises(RuntimeError, match="already started"):
        proxy.start()
