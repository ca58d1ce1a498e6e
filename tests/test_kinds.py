"""Every kind of entry reads exactly: encrypted, inline, S3 objects, appended, via the filer."""

import os
import random

import boto3
import pytest
import requests
from botocore.config import Config as BotoConfig
from proxy import FaultProxy

import seaweed_data as sd
from seaweed_data.core.cluster import LocalCluster

SIZES = [0, 1, 4095, 1_000_003, 3 * 1024 * 1024 + 5]


def check_sizes(client: sd.Client, base: str) -> None:
    rng = random.Random(11)
    for size in SIZES:
        data = rng.randbytes(size)
        path = f"{base}/{size}.bin"
        client.write(path, data)
        assert client.read(path) == data
        for _ in range(5):
            offset = rng.randrange(size + 1)
            length = rng.randrange(1_500_000)
            assert client.read(path, offset, length) == data[offset:offset + length]


def test_encrypted_volume_data_reads_exact():
    with (LocalCluster(filer_args=("-maxMB=1", "-encryptVolumeData"), stop_grace=1.0) as cluster,
          cluster.client() as client):
            check_sizes(client, "/enc")
            entry = client.stat(f"/enc/{SIZES[-1]}.bin")
            assert entry.chunks and all(c.cipher_key for c in entry.chunks)
            # The volume server holds ciphertext only.
            raw = requests.get(f"http://{cluster.volume_urls[0].split('://')[-1]}/"
                               f"{entry.chunks[0].file_id}", timeout=10).content
            assert raw[12:40] not in client.read(entry.path)
            text = b"compressible text " * 20_000
            requests.put(f"{cluster.filer_url}/enc/t.txt", data=text, timeout=30,
                         headers={"Content-Type": "text/plain"}).raise_for_status()
            assert client.read("/enc/t.txt") == text
            assert client.read("/enc/t.txt", 12345, 54321) == text[12345:12345 + 54321]


def test_inline_entries_read_without_volume_requests():
    with (LocalCluster(filer_args=("-saveToFilerLimit=4096",), stop_grace=1.0) as cluster,
          cluster.client() as client):
            client.write("/inline/small.bin", b"tiny payload")
            entry = client.stat("/inline/small.bin")
            assert entry.content == b"tiny payload" and not entry.chunks
            before = client.stats()["volume_requests"]
            assert client.read("/inline/small.bin") == b"tiny payload"
            assert client.read("/inline/small.bin", 5, 3) == b"pay"
            assert client.read_many(["/inline/small.bin"] * 3) == [b"tiny payload"] * 3
            assert client.stats()["volume_requests"] == before
            big = os.urandom(10_000)
            client.write("/inline/big.bin", big)
            assert client.read("/inline/big.bin") == big


def test_objects_written_through_s3_read_exact(cluster_s3):
    s3 = boto3.client("s3", endpoint_url=cluster_s3.s3_url, region_name="us-east-1",
                      aws_access_key_id=cluster_s3.s3_access_key,
                      aws_secret_access_key=cluster_s3.s3_secret_key,
                      config=BotoConfig(s3={"addressing_style": "path"}))
    s3.create_bucket(Bucket="data")
    body = os.urandom(9 * 1024 * 1024 + 3)
    s3.put_object(Bucket="data", Key="train/shard-0.bin", Body=body)
    with cluster_s3.client() as client:
        assert client.read("/buckets/data/train/shard-0.bin") == body
        assert client.read("/buckets/data/train/shard-0.bin", 4_000_000, 100) == body[
            4_000_000:4_000_100]
        assert client.glob("/buckets/data/train/*.bin") == ["/buckets/data/train/shard-0.bin"]


def test_file_grown_with_append_reads_exact(cluster):
    url = f"{cluster.filer_url}/kinds/appended.log"
    expected = b""
    with requests.Session() as session:
        for i in range(40):
            piece = os.urandom(random.Random(i).randrange(1, 70_000))
            session.put(url, params={"op": "append"}, data=piece, timeout=10).raise_for_status()
            expected += piece
    with cluster.client() as client:
        entry = client.stat("/kinds/appended.log")
        assert len(entry.chunks) > 1
        assert client.read("/kinds/appended.log") == expected
        assert client.read("/kinds/appended.log", 100_000, 500_000) == expected[
            100_000:600_000]


def test_bulk_bytes_bypass_the_filer(cluster):
    data = os.urandom(8 * 1024 * 1024)
    with cluster.client() as client:
        client.write("/kinds/bypass.bin", data)
    with FaultProxy(cluster.filer_url) as proxy:
        with sd.Client(proxy.url, sd.Config(master=cluster.master_url)) as client:
            assert client.read("/kinds/bypass.bin") == data
        assert proxy.bytes_down < 0.01 * len(data)


def test_master_is_discovered_from_the_filer(cluster):
    config = sd.Config(filer_grpc_port=cluster.filer_grpc_port)
    with sd.Client(cluster.filer_url, config) as client:
        client.write("/kinds/disc.bin", b"d" * 100_000)
        assert client.read("/kinds/disc.bin") == b"d" * 100_000
        assert client.stats()["volume_requests"] >= 1  # read from the volume server
        assert client._run(client._async().masters()) == [cluster.master_url]


def test_without_a_master_reads_go_through_the_filer(cluster):
    data = os.urandom(2_500_000)
    with cluster.client() as client:
        client.write("/kinds/nomaster.bin", data)
    config = sd.Config(filer_grpc_port=1)  # discovery fails: nothing listens there
    with sd.Client(cluster.filer_url, config) as client:
        assert client.read("/kinds/nomaster.bin") == data
        assert client.read("/kinds/nomaster.bin", 1_000_000, 10) == data[1_000_000:1_000_010]
        stats = client.stats()
        assert stats["volume_requests"] == 0
        assert len(data) <= stats["bytes_fetched"] <= len(data) + 10  # counted on this path too


@pytest.mark.parametrize("port_offset", [0])
def test_default_grpc_port_convention(port_offset):
    from seaweed_data.core.discovery import default_grpc_port

    assert default_grpc_port(8888 + port_offset) == 18888


def test_discovery_with_an_impossible_default_grpc_port_reads_through_the_filer(cluster):
    """A filer on port > 55535 has no port + 10000: discovery gives up, reads still work."""
    from seaweed_data.core.aclient import AsyncClient
    from seaweed_data.core.metrics import Counters

    async def go() -> list[str]:
        core = AsyncClient("http://127.0.0.1:60000", sd.Config(), Counters())
        try:
            return await core.masters()
        finally:
            await core.close()

    import asyncio

    assert asyncio.run(go()) == []
