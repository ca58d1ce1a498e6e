"""Whole and ranged reads against a real SeaweedFS (filer -maxMB=1: multi-chunk files)."""

import io
import os
import random
import tarfile

import pytest
import requests

import seaweed_data as sd

SIZES = [0, 1, 4095, 1_000_003, 9 * 1024 * 1024 + 17]


@pytest.fixture(scope="module")
def client(cluster):
    with cluster.client(memory_cache_bytes=0) as c:  # every read goes to the servers
        yield c


@pytest.fixture(scope="module")
def files(cluster, client):
    rng = random.Random(7)
    data = {size: rng.randbytes(size) for size in SIZES}
    for size, payload in data.items():
        client.write(f"/read/sizes/{size}.bin", payload)
    return data


@pytest.mark.parametrize("size", SIZES)
def test_whole_file_is_byte_exact(client, files, size):
    assert client.read(f"/read/sizes/{size}.bin") == files[size]
    assert client.stat(f"/read/sizes/{size}.bin").size == size


@pytest.mark.parametrize("size", SIZES)
def test_ranges_are_byte_exact(client, files, size):
    data = files[size]
    rng = random.Random(size)
    spans = [(0, 1), (size - 1, 5), (size // 2, None), (size, 10), (size + 5, 1)]
    spans += [(rng.randrange(size + 1), rng.randrange(2 * 1024 * 1024)) for _ in range(8)]
    for offset, length in spans:
        offset = max(offset, 0)
        expected = data[offset:] if length is None else data[offset:offset + length]
        assert client.read(f"/read/sizes/{size}.bin", offset, length) == expected, (offset, length)


def test_multi_chunk_file_has_many_chunks_and_reads_from_volumes(client, files):
    entry = client.stat(f"/read/sizes/{SIZES[-1]}.bin")
    assert len(entry.chunks) >= 9
    before = client.stats()
    client.read(f"/read/sizes/{SIZES[-1]}.bin")
    after = client.stats()
    assert after["volume_requests"] - before["volume_requests"] == len(entry.chunks)
    assert after["bytes_fetched"] - before["bytes_fetched"] == SIZES[-1]


def test_gzip_stored_text_reads_exact(cluster, client):
    text = ("the quick brown fox jumps over the lazy dog\n" * 5000).encode()
    # Upload as text/plain through the filer: the volume server stores it gzip-compressed.
    requests.put(f"{cluster.filer_url}/read/text.txt", data=text,
                 headers={"Content-Type": "text/plain"}, timeout=30).raise_for_status()
    entry = client.stat("/read/text.txt")
    assert any(c.is_compressed for c in entry.chunks)
    assert client.read("/read/text.txt") == text
    assert client.read("/read/text.txt", 1000, 333) == text[1000:1333]


def test_read_many_keeps_order_and_is_exact(client):
    payloads = {f"/read/many/f{i:04d}.bin": os.urandom(random.randrange(0, 5000))
                for i in range(60)}
    for path, data in payloads.items():
        client.write(path, data)
    paths = list(payloads)
    random.Random(3).shuffle(paths)
    paths.append(paths[0])  # duplicates are fine
    assert client.read_many(paths) == [payloads[p] for p in paths]


def test_read_many_uses_listing_for_metadata(client):
    for i in range(40):
        client.write(f"/read/listed/{i:03d}.bin", b"x" * i)
    fresh = sd.Client(client.filer, client.config)
    try:
        data = fresh.read_many([f"/read/listed/{i:03d}.bin" for i in range(40)])
        assert data == [b"x" * i for i in range(40)]
        assert fresh.stats()["filer_requests"] <= 2  # one listing page, no per-file stat
    finally:
        fresh.close()


def test_missing_file_raises_not_found_naming_it(client):
    with pytest.raises(sd.NotFoundError, match=r"/read/nope\.bin") as info:
        client.read("/read/nope.bin")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        client.read_many(["/read/sizes/1.bin", "/read/nope2.bin"])


def test_directory_read_is_a_clear_error(client, files):
    with pytest.raises(sd.IsDirectoryError, match="/read/sizes"):
        client.read("/read/sizes")


def test_open_rb_is_seekable_and_buffered(client, files):
    data = files[SIZES[-1]]
    with client.open(f"/read/sizes/{SIZES[-1]}.bin") as f:
        assert f.seekable() and f.readable()
        assert f.read(10) == data[:10]
        f.seek(-100, io.SEEK_END)
        assert f.read() == data[-100:]
        f.seek(3_000_000)
        assert f.read(2_500_000) == data[3_000_000:5_500_000]
        assert f.tell() == 5_500_000
        f.seek(5, io.SEEK_CUR)
        assert f.read(1) == data[5_500_005:5_500_006]
    with pytest.raises(ValueError):
        f.read(1)


def test_open_rb_serves_tarfile_pillow_and_torch(client):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 10, 30)).save(buffer, format="PNG")
    client.write("/read/img.png", buffer.getvalue())
    with client.open("/read/img.png") as f, Image.open(f) as img:
        assert img.size == (16, 8) and img.getpixel((3, 3)) == (200, 10, 30)

    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        for name in ("a.txt", "b.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(name[:1].encode() * 3))
    client.write("/read/t.tar", tar_bytes.getvalue())
    with client.open("/read/t.tar") as f, tarfile.open(fileobj=f) as tar:
        assert tar.getnames() == ["a.txt", "b.txt"]
        assert tar.extractfile("b.txt").read() == b"bbb"

    torch = pytest.importorskip("torch")
    state = {"w": torch.arange(300_000, dtype=torch.float32)}
    with client.open("/read/state.pt", "wb") as f:
        torch.save(state, f)
    with client.open("/read/state.pt") as f:
        loaded = torch.load(f, weights_only=True)
    assert torch.equal(loaded["w"], state["w"])


def test_open_wb_is_atomic(client):
    path = "/read/atomic.bin"
    with client.open(path, "wb") as f:
        f.write(b"part one ")
        assert not client.exists(path)
        f.write(b"part two")
        assert f.tell() == 17
    assert client.read(path) == b"part one part two"

    with pytest.raises(RuntimeError), client.open(path, "wb") as f:
        f.write(b"garbage")
        raise RuntimeError("crash in the middle")
    assert client.read(path) == b"part one part two"


def test_open_bad_mode(client):
    with pytest.raises(ValueError, match="mode"):
        client.open("/read/x", "r+")
