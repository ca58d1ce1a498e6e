"""Failure handling against real servers: dead and hung replicas, flaky links, dead filers."""

import asyncio
import os
import socket
import threading
import time
from collections import Counter

import pytest
from aiohttp import web
from proxy import FaultProxy

import seaweed_data as sd
from seaweed_data.core.http import Http, retry_after
from seaweed_data.core.metrics import Counters


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_filer_fails_fast_naming_the_address():
    port = free_port()
    with sd.Client(f"http://127.0.0.1:{port}", sd.Config(retries=3)) as client:
        start = time.monotonic()
        with pytest.raises(sd.UnreachableError, match=f"127.0.0.1:{port}") as info:
            client.read("/x")
        assert time.monotonic() - start < 5
        assert isinstance(info.value, OSError)


def busiest_server(cluster, client, paths):
    """The volume server that reads of ``paths`` try first most often (a replica holder)."""
    counts: Counter[str] = Counter()
    for path in paths:
        for chunk in client.stat(path).chunks:
            counts[client._run(client._async().locations.lookup(chunk.volume_id))[0]] += 1
    server = counts.most_common(1)[0][0]
    return [u.split("://")[1] for u in cluster.volume_urls].index(server)


@pytest.fixture(scope="module")
def replicated_data(cluster_replicated):
    with cluster_replicated.client() as client:
        data = {f"/faults/f{i:02d}.bin": os.urandom(1_500_000 + i) for i in range(24)}
        for path, payload in data.items():
            client.write(path, payload)
        yield data


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_replica_loss_mid_loop_loses_no_read(cluster_replicated, replicated_data, fault):
    with cluster_replicated.client(location_ttl=600) as client:
        paths = list(replicated_data)
        victim = busiest_server(cluster_replicated, client, paths)
        slowest = 0.0
        for round_no in range(3):
            for i, path in enumerate(paths):
                if round_no == 0 and i == len(paths) // 3:
                    getattr(cluster_replicated, f"{fault}_volume")(victim)
                start = time.monotonic()
                assert client.read(path) == replicated_data[path]
                slowest = max(slowest, time.monotonic() - start)
        assert slowest < 5.0
        assert client.stats()["failovers"] >= 1


def test_flaky_filer_link_is_retried_and_exact(cluster):
    data = os.urandom(3_000_000)
    with cluster.client() as client:
        client.write("/faults/flaky.bin", data)
    with FaultProxy(cluster.filer_url) as proxy, sd.Client(
            proxy.url, sd.Config(master=cluster.master_url, metadata_ttl=0)) as client:
        proxy.reset_after(100, times=2)
        assert client.read("/faults/flaky.bin") == data
        proxy.truncate(50, times=2)
        assert client.read("/faults/flaky.bin") == data
        proxy.delay_first_byte(0.3, times=1)
        assert client.read("/faults/flaky.bin", 10, 10) == data[10:20]
        assert client.stats()["retries"] >= 1


def test_flaky_filer_read_path_never_returns_a_wrong_byte(cluster):
    data = os.urandom(2_000_000)
    with cluster.client() as client:
        client.write("/faults/through.bin", data)
    config = sd.Config(filer_grpc_port=1, metadata_ttl=0)  # no master: bytes via the filer
    with FaultProxy(cluster.filer_url) as proxy, sd.Client(proxy.url, config) as client:
        proxy.truncate(600_000, times=3)
        assert client.read("/faults/through.bin") == data
        proxy.reset_after(1_000_000, times=2)
        assert client.read("/faults/through.bin", 5, 1_500_000) == data[5:1_500_005]


def test_hung_filer_times_out_with_a_clear_error():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepts connections, never answers
    port = listener.getsockname()[1]
    try:
        config = sd.Config(read_timeout=0.3, retries=1, backoff_base=0.01)
        with sd.Client(f"http://127.0.0.1:{port}", config) as client:
            start = time.monotonic()
            with pytest.raises(sd.RequestTimeoutError, match=str(port)):
                client.stat("/x")
            assert time.monotonic() - start < 3
    finally:
        listener.close()


class FlakyServer:
    """No real server answers 503 with Retry-After on demand: a tiny aiohttp one does."""

    def __init__(self, failures: int, status: int = 503) -> None:
        self.failures, self.status, self.hits = failures, status, 0
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.hits <= self.failures:
            return web.Response(status=self.status, headers={"Retry-After": "0.05"})
        return web.Response(body=b"finally")

    def __enter__(self) -> "FlakyServer":
        self._thread.start()
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


@pytest.mark.parametrize(("failures", "retries", "expected"), [
    (2, 3, 200), (4, 3, 503)])
def test_503_with_retry_after_is_retried(failures, retries, expected):
    async def go(port: int) -> tuple[int, int]:
        http = Http(sd.Config(retries=retries), Counters())
        try:
            response = await http.request("GET", f"http://127.0.0.1:{port}/x", kind="filer")
            return response.status, http.counters.get("retries")
        finally:
            await http.close()

    with FlakyServer(failures) as server:
        status, retried = asyncio.run(go(server.port))
    assert status == expected
    assert retried == min(failures, retries)


def test_retry_after_parsing():
    assert retry_after({"Retry-After": "2"}) == 2.0
    assert retry_after({"Retry-After": "9999"}) == 10.0
    assert retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after({}) is None
