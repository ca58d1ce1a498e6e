"""Entry kinds no local filer produces on demand (chunk manifests, overlapping chunks, remote
mounts), served by a thin fake filer whose chunk lists point at real needles on the real
volume servers of the test cluster. Only the metadata is synthetic: every byte still comes
from SeaweedFS."""

import asyncio
import json
import os
import threading

import pytest
import requests
from aiohttp import web

import seaweed_data as sd


class MetadataFiler:
    """Answers ``?metadata=true`` from a table; proxies plain GETs to the real filer."""

    def __init__(self, real_filer: str, entries: dict[str, dict], resolved: dict[str, dict]):
        self.real_filer, self.entries, self.resolved = real_filer, entries, resolved
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.query.get("metadata") == "true":
            table = self.resolved if request.query.get("resolveManifest") else self.entries
            return web.json_response(table[path])
        headers = {k: v for k, v in request.headers.items() if k.lower() == "range"}
        upstream = requests.get(self.real_filer + self.entries[path]["_real"], headers=headers,
                                timeout=30)
        return web.Response(status=upstream.status_code, body=upstream.content)

    def __enter__(self) -> str:
        self._thread.start()
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)

        async def start() -> int:
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            return site._server.sockets[0].getsockname()[1]

        port = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def metadata(cluster, path):
    return requests.get(f"{cluster.filer_url}{path}", params={"metadata": "true"},
                        headers={"Accept": "application/json"}, timeout=10).json()


@pytest.fixture(scope="module")
def real_files(cluster):
    data = {"a": os.urandom(2_500_000), "b": os.urandom(700_000)}
    with cluster.client() as client:
        for name, payload in data.items():
            client.write(f"/synthetic/{name}.bin", payload)
    return data


def test_chunk_manifest_is_resolved(cluster, real_files):
    real = dict(metadata(cluster, "/synthetic/a.bin"), FullPath="/m.bin")
    manifest_view = dict(real, chunks=[{"file_id": "9,1234", "size": 100,
                                        "is_chunk_manifest": True}])
    entries = {"/m.bin": manifest_view}
    with MetadataFiler(cluster.filer_url, entries, {"/m.bin": real}) as fake, sd.Client(
            fake, sd.Config(master=cluster.master_url)) as client:
        assert client.read("/m.bin") == real_files["a"]
        assert client.read("/m.bin", 1_234_567, 89) == real_files["a"][1_234_567:1_234_656]


def test_overlapping_chunks_newest_wins_holes_are_zero(cluster, real_files):
    a_chunks = metadata(cluster, "/synthetic/a.bin")["chunks"]
    b_chunk = metadata(cluster, "/synthetic/b.bin")["chunks"][0]
    size = 3_000_000
    newer = dict(b_chunk, offset=500_000,
                 modified_ts_ns=a_chunks[0]["modified_ts_ns"] + 10**12)
    chunks = [newer, *a_chunks]  # a covers [0, 2.5 MB); a hole after it
    entry = {"FullPath": "/o.bin", "FileSize": size, "Mode": 432, "chunks": chunks}
    expected = bytearray(real_files["a"] + bytes(size - len(real_files["a"])))
    expected[500_000:1_200_000] = real_files["b"]
    with MetadataFiler(cluster.filer_url, {"/o.bin": entry}, {}) as fake, sd.Client(
            fake, sd.Config(master=cluster.master_url)) as client:
        assert client.read("/o.bin") == bytes(expected)
        assert client.read("/o.bin", 499_990, 20) == bytes(expected[499_990:500_010])
        assert client.read("/o.bin", 1_199_990, 20) == bytes(expected[1_199_990:1_200_010])
        assert client.read("/o.bin", 2_499_000, 5000) == bytes(expected[2_499_000:2_504_000])


def test_remote_entries_are_read_through_the_filer(cluster, real_files):
    entry = {"FullPath": "/r.bin", "FileSize": 0, "Mode": 432, "chunks": None,
             "Remote": {"remote_size": len(real_files["b"]), "storage_name": "s3-archive"},
             "_real": "/synthetic/b.bin"}
    with MetadataFiler(cluster.filer_url, {"/r.bin": entry}, {}) as fake, sd.Client(
            fake, sd.Config(master=cluster.master_url)) as client:
        assert client.read("/r.bin") == real_files["b"]
        assert client.read("/r.bin", 10, 10) == real_files["b"][10:20]
        assert client.stats()["volume_requests"] == 0


def test_a_chunk_gone_on_every_replica_is_a_clear_error(cluster, real_files):
    real = metadata(cluster, "/synthetic/b.bin")
    vid = real["chunks"][0]["file_id"].split(",")[0]
    broken = dict(real, FullPath="/gone.bin",
                  chunks=[dict(real["chunks"][0], file_id=f"{vid},ffffffff01020304")])
    with (MetadataFiler(cluster.filer_url, {"/gone.bin": broken}, {}) as fake,
          sd.Client(fake, sd.Config(master=cluster.master_url)) as client,
          pytest.raises(sd.NotFoundError, match=r"gone\.bin")):
        client.read("/gone.bin")
    assert json.dumps(broken)  # the entry itself was well formed
