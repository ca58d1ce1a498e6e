"""Checkpoints (``seaweed_data.torch.save``/``load``) and the parallel atomic upload under them,
against a real SeaweedFS (the session ``cluster``: filer chunks of 1 MB).

Atomicity is checked the hard way: a subprocess saving ~200 MB is SIGKILLed once its first
chunks are on the volume server, for the direct path (chunks to volume servers, one gRPC
``CreateEntry``) and for the fallback (one streaming PUT through the filer).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import torch
from proxy import FaultProxy

import seaweed_data as sd
from seaweed_data.core import protowrite
from seaweed_data.core.cluster import LocalCluster
from seaweed_data.core.discovery import get_filer_configuration, iter_fields
from seaweed_data.core.filer_grpc import CommitUnknownError
from seaweed_data.core.loop import LOOP
from seaweed_data.core.upload import UploadOptions, upload, with_path, write_file
from seaweed_data.errors import (
    ConfigError,
    CorruptDataError,
    IsDirectoryError,
    NotFoundError,
    ServerError,
    TransportError,
    UnreachableError,
)
from seaweed_data.torch import SaveHandle, load, save
from seaweed_data.torch import checkpoint as checkpoint_module

MiB = 1 << 20
CLOSED_PORT = 1  # nothing listens on port 1 of loopback


@pytest.fixture
def config(cluster: LocalCluster) -> sd.Config:
    """The direct path: master known, filer gRPC port known."""
    return sd.Config(master=cluster.master_url, filer_grpc_port=cluster.filer_grpc_port)


@pytest.fixture
def client(cluster: LocalCluster, config: sd.Config) -> Iterator[sd.Client]:
    with sd.Client(cluster.filer_url, config) as made:
        yield made


def state_dict(megabytes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    rows = megabytes * MiB // 4 // 256
    return {
        "encoder.weight": torch.randn(rows, 256, generator=generator),
        "encoder.bias": torch.randn(256, generator=generator).to(torch.bfloat16),
        "step": torch.tensor(seed, dtype=torch.int64),
        "transposed": torch.randn(64, 32, generator=generator).t(),
    }


def assert_same(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor), name


def volume_totals(cluster: LocalCluster) -> tuple[int, int]:
    """(needles written, needles deleted) over every volume of every volume server."""
    files = deleted = 0
    for url in cluster.volume_urls:
        for volume in requests.get(f"{url}/status", timeout=10).json()["Volumes"]:
            files += volume["FileCount"]
            deleted += volume["DeleteCount"]
    return files, deleted


# --------------------------------------------------------------------------- round trips


def test_round_trip_multi_chunk(client: sd.Client, unique_dir: str) -> None:
    expected = state_dict(6)
    entry = save(expected, f"{unique_dir}/model.pt", client=client, chunk_bytes=MiB)
    assert isinstance(entry, sd.Entry) and entry.size > 6 * MiB
    assert len(entry.chunks) == -(-entry.size // MiB)  # our chunks, not the filer's
    stats = client.stats()
    assert stats["upload_chunks"] == len(entry.chunks)
    assert stats.get("upload_fallbacks", 0) == 0
    assert_same(load(f"{unique_dir}/model.pt", client=client), expected)


def test_locations_and_owned_clients(cluster: LocalCluster, config: sd.Config,
                                     unique_dir: str) -> None:
    expected = state_dict(1, seed=3)
    host = cluster.filer_url.removeprefix("http://")
    save(expected, f"seaweedfs://{host}{unique_dir}/a.pt", config=config)
    assert_same(load(f"{cluster.filer_url}{unique_dir}/a.pt", config=config), expected)
    loaded = load(f"seaweedfs://{host}{unique_dir}/a.pt", map_location="cpu", config=config)
    assert_same(loaded, expected)


def test_background_save_snapshots_the_object(client: sd.Client, unique_dir: str) -> None:
    tensors = state_dict(4, seed=1)
    expected = {name: tensor.clone() for name, tensor in tensors.items()}
    handle = save(tensors, f"{unique_dir}/bg.pt", client=client, background=True,
                  chunk_bytes=MiB)
    assert isinstance(handle, SaveHandle)
    for tensor in tensors.values():  # training goes on and changes the weights in place
        tensor.add_(1)
    entry = handle.wait(timeout=60)
    assert handle.done() and "done" in repr(handle)
    assert entry.path == f"{unique_dir}/bg.pt"
    assert_same(load(f"{unique_dir}/bg.pt", client=client), expected)


def test_background_save_with_its_own_client(cluster: LocalCluster, config: sd.Config,
                                             unique_dir: str) -> None:
    location = f"{cluster.filer_url}{unique_dir}/own.pt"
    handle = save({"x": torch.arange(10)}, location, config=config, background=True)
    handle.wait(timeout=60)
    assert torch.equal(load(location, config=config)["x"], torch.arange(10))


def test_spooled_to_a_file_past_the_limit(client: sd.Client, unique_dir: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_module, "SPOOL_BYTES", 256 * 1024)
    expected = state_dict(2, seed=2)
    entry = save(expected, f"{unique_dir}/spooled.pt", client=client, chunk_bytes=MiB // 2)
    assert len(entry.chunks) >= 4
    assert_same(load(f"{unique_dir}/spooled.pt", client=client), expected)


def test_replaces_an_older_checkpoint(client: sd.Client, unique_dir: str) -> None:
    path = f"{unique_dir}/ckpt.pt"
    save(state_dict(3, seed=4), path, client=client, chunk_bytes=MiB)
    newer = {"step": torch.tensor(5)}
    entry = save(newer, path, client=client)
    assert len(entry.chunks) == 1
    assert_same(load(path, client=client), newer)
    assert client.listdir(unique_dir) == ["ckpt.pt"]


# --------------------------------------------------------------------------- errors


def test_load_missing_raises_not_found(client: sd.Client, unique_dir: str) -> None:
    with pytest.raises(NotFoundError, match=re.escape("missing.pt")):
        load(f"{unique_dir}/missing.pt", client=client)


class Arbitrary:
    """Not a tensor: ``weights_only=True`` must refuse to unpickle it."""

    def __init__(self) -> None:
        self.value = 42


def test_weights_only_refuses_arbitrary_objects(client: sd.Client, unique_dir: str) -> None:
    path = f"{unique_dir}/pickled.pt"
    save({"obj": Arbitrary()}, path, client=client)
    with pytest.raises(pickle.UnpicklingError):
        load(path, client=client)
    assert load(path, weights_only=False, client=client)["obj"].value == 42


def test_unreachable_master_names_the_path(cluster: LocalCluster, unique_dir: str) -> None:
    config = sd.Config(master="http://127.0.0.1:1", filer_grpc_port=cluster.filer_grpc_port,
                       retries=1, backoff_base=0.01)
    path = f"{unique_dir}/never.pt"
    with sd.Client(cluster.filer_url, config) as client:
        with pytest.raises(UnreachableError, match=re.escape(path)) as info:
            save({"x": torch.zeros(4)}, path, client=client)
        assert "127.0.0.1:1" in str(info.value)
        handle = save({"x": torch.zeros(4)}, path, client=client, background=True)
        with pytest.raises(UnreachableError, match=re.escape(path)):
            handle.wait(timeout=30)
        assert not client.exists(path)


def test_no_direct_path_and_no_fallback(cluster: LocalCluster, unique_dir: str) -> None:
    config = sd.Config(master=cluster.master_url, filer_grpc_port=CLOSED_PORT)
    path = f"{unique_dir}/x.bin"
    with sd.Client(cluster.filer_url, config) as client:
        with pytest.raises(UnreachableError, match=re.escape(path)):
            write_file(client, path, b"abc", UploadOptions(fallback=False))
        assert not client.exists(path)


def test_fallback_through_the_filer(cluster: LocalCluster, unique_dir: str) -> None:
    config = sd.Config(master=cluster.master_url, filer_grpc_port=CLOSED_PORT)
    data = os.urandom(3 * MiB + 5)
    with sd.Client(cluster.filer_url, config) as client:
        entry = write_file(client, f"{unique_dir}/a.bin", data)
        assert entry.size == len(data) and len(entry.chunks) == 4  # the filer's 1 MB chunks
        spooled = checkpoint_module.serialize({"x": torch.arange(5)}, limit=16)
        write_file(client, f"{unique_dir}/b.pt", spooled.contents())  # a file source
        spooled.close()
        assert client.stats()["upload_fallbacks"] == 2
        assert client.read(f"{unique_dir}/a.bin") == data
        assert torch.equal(load(f"{unique_dir}/b.pt", client=client)["x"], torch.arange(5))


def test_failed_commit_deletes_its_chunks(client: sd.Client, cluster: LocalCluster,
                                          unique_dir: str) -> None:
    client.write(f"{unique_dir}/sub/file.bin", b"x")  # makes the directory unique_dir/sub
    before = volume_totals(cluster)
    with pytest.raises(IsDirectoryError, match=re.escape(f"{unique_dir}/sub")):
        write_file(client, f"{unique_dir}/sub", os.urandom(5 * MiB),
                   UploadOptions(chunk_bytes=MiB))
    stats = client.stats()
    assert stats["upload_chunks"] == 5
    assert stats["upload_chunks_deleted"] == 5
    after = volume_totals(cluster)
    assert after[0] - before[0] >= 5 and after[1] - before[1] == 5
    assert client.read(f"{unique_dir}/sub/file.bin") == b"x"


def test_upload_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="chunk_bytes"):
        UploadOptions(chunk_bytes=0)
    with pytest.raises(ConfigError, match="concurrency"):
        UploadOptions(concurrency=0)


def test_errors_get_the_path() -> None:
    named = with_path(ServerError("HTTP 500", 500), "/a")
    assert isinstance(named, ServerError) and named.status == 500 and "'/a'" in str(named)
    corrupt = with_path(CorruptDataError("bad"), "/a")
    assert isinstance(corrupt, CorruptDataError) and corrupt.path == "/a"
    assert type(with_path(TransportError("reset"), "/a")) is TransportError
    assert "'/a'" in str(with_path(ValueError("odd"), "/a"))
    already = IsDirectoryError("cannot write '/a'")
    assert with_path(already, "/a") is already


# --------------------------------------------------------------------------- big requests


def test_thousands_of_chunks_in_one_create_entry(client: sd.Client, unique_dir: str) -> None:
    """The chunk list exceeds one HTTP/2 frame and the initial 64 KiB window."""
    data = os.urandom(3 * MiB // 2 + 7)
    path = f"{unique_dir}/many.bin"
    entry = write_file(client, path, data, UploadOptions(chunk_bytes=1024, concurrency=64))
    assert entry.size == len(data) and len(entry.chunks) == 1537
    chunks = [protowrite.StoredChunk(c.file_id, c.offset, c.size, c.modified_ts_ns, c.etag)
              for c in entry.chunks]
    request = protowrite.create_entry_request(
        unique_dir, "many.bin", chunks, protowrite.FileAttributes(entry.size, time.time_ns()))
    assert len(request) > 65535
    assert client.read(path) == data
    assert requests.get(f"{client.filer}{path}", timeout=30).content == data


def probe_bytes(proxy: FaultProxy) -> int:
    """The bytes the filer's gRPC port sends for one configuration probe, through ``proxy``
    (counted once the proxy has forwarded them all: its count may lag the client's return)."""
    asyncio.run(get_filer_configuration("127.0.0.1", proxy.port))
    seen = -1
    while proxy.bytes_down != seen:
        seen = proxy.bytes_down
        time.sleep(0.1)
    return seen


def test_lost_create_entry_reply_is_recognised(
        cluster: LocalCluster, fault_proxy: Callable[[str | tuple[str, int]], FaultProxy],
        unique_dir: str) -> None:
    """The filer created the entry but its reply was cut: the upload checks and succeeds."""
    proxy = fault_proxy(("127.0.0.1", cluster.filer_grpc_port))
    probe = probe_bytes(proxy)
    proxy.truncate(probe + 40, times=None)  # longer replies than that are cut
    config = sd.Config(master=cluster.master_url, filer_grpc_port=proxy.port)
    data = os.urandom(3 * MiB)
    path = f"{unique_dir}/lost_reply.bin"
    with sd.Client(cluster.filer_url, config) as client:
        entry = write_file(client, path, data, UploadOptions(chunk_bytes=MiB))
        assert proxy.resets == 1  # the CreateEntry reply, not the (shorter) probe's
        assert entry.size == len(data) and client.read(path) == data
        assert client.stats().get("upload_chunks_deleted", 0) == 0


def test_unknown_outcome_keeps_the_chunks(
        client: sd.Client, cluster: LocalCluster,
        fault_proxy: Callable[[str | tuple[str, int]], FaultProxy], unique_dir: str) -> None:
    """Reply lost and the filer's HTTP API unreachable: the file may exist, keep its chunks."""
    grpc = fault_proxy(("127.0.0.1", cluster.filer_grpc_port))
    grpc.truncate(probe_bytes(grpc) + 40, times=None)
    http = fault_proxy(cluster.filer_url)
    http.reset_after(0, times=None)
    config = sd.Config(master=cluster.master_url, filer_grpc_port=grpc.port, retries=0)
    path = f"{unique_dir}/unknown.bin"
    data = os.urandom(2 * MiB)
    with sd.Client(http.url, config) as cut_off:
        with pytest.raises(CommitUnknownError, match=re.escape(path)):
            write_file(cut_off, path, data, UploadOptions(chunk_bytes=MiB))
        assert cut_off.stats().get("upload_chunks_deleted", 0) == 0
    assert client.read(path) == data  # it had been created


def test_collection_and_replication(client: sd.Client, cluster: LocalCluster,
                                    unique_dir: str) -> None:
    options = UploadOptions(chunk_bytes=MiB, replication="000", collection="checkpoints")
    entry = write_file(client, f"{unique_dir}/c.bin", os.urandom(2 * MiB), options)
    volumes = {str(v["Id"]): v["Collection"] for url in cluster.volume_urls
               for v in requests.get(f"{url}/status", timeout=10).json()["Volumes"]}
    assert {volumes[chunk.volume_id] for chunk in entry.chunks} == {"checkpoints"}


def test_unpicklable_object_fails_before_any_io() -> None:
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save({"f": lambda: 1}, "seaweedfs://127.0.0.1:1/never.pt")


def test_empty_file(client: sd.Client, unique_dir: str) -> None:
    entry = write_file(client, f"{unique_dir}/empty", b"")
    assert entry.size == 0 and not entry.chunks
    assert client.read(f"{unique_dir}/empty") == b""


def test_async_upload_of_a_file_object(client: sd.Client, unique_dir: str,
                                       tmp_path: Path) -> None:
    data = os.urandom(MiB + 1)
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    core = client._async()
    path = f"{unique_dir}/from_file.bin"

    async def run() -> sd.Entry:
        with source.open("rb") as handle:
            return await upload(core, path, handle, UploadOptions(chunk_bytes=256 * 1024))

    entry = LOOP.run(run())
    assert len(entry.chunks) == 5
    assert client.read(path) == data


# --------------------------------------------------------------------------- protobuf


def test_file_id_parsing() -> None:
    fid = protowrite.FileId.parse("3,01637037d6")
    assert (fid.volume_id, fid.file_key, fid.cookie) == (3, 0x01, 0x637037d6)
    assert protowrite.FileId.parse("7,ab12345678_2").file_key == 0xAB
    for bad in ("3", "x,01637037d6", "3,1234", "3,zz637037d6"):
        with pytest.raises(ServerError, match="malformed file id"):
            protowrite.FileId.parse(bad)


def test_create_entry_request_encoding() -> None:
    chunk = protowrite.StoredChunk("3,01637037d6", 0, 5, 123, "abcd0123")
    attributes = protowrite.FileAttributes(5, 1_700_000_000_123_456_789, mime="x/y")
    request = protowrite.create_entry_request("/a", "b.pt", [chunk], attributes)
    fields = {number: value for number, _, value in iter_fields(request)}
    assert fields[1] == b"/a"
    entry = dict((n, v) for n, _, v in iter_fields(fields[2]))  # type: ignore[arg-type]
    assert entry[1] == b"b.pt"
    stored = dict((n, v) for n, _, v in iter_fields(entry[3]))  # type: ignore[arg-type]
    assert stored[1] == b"3,01637037d6" and stored[3] == 5 and stored[4] == 123
    attrs = dict((n, v) for n, _, v in iter_fields(entry[4]))  # type: ignore[arg-type]
    assert attrs[2] == 1_700_000_000 and attrs[19] == 123_456_789 and attrs[3] == 0o660
    assert protowrite.varint(-1) == b"\xff" * 9 + b"\x01"
    assert protowrite.create_entry_error(protowrite.str_field(1, "boom")) == "boom"
    assert protowrite.create_entry_error(b"") == ""


# --------------------------------------------------------------------------- SIGKILL mid-save

KILLED_SAVER = r"""
import sys, torch
import seaweed_data as sd
from seaweed_data.torch import save
filer, master, grpc_port, directory = sys.argv[1:5]
config = sd.Config(master=master, filer_grpc_port=int(grpc_port))
big = {"w": torch.ones(50 * 2**20)}  # 200 MB
with sd.Client(filer, config) as client:
    print("ready", flush=True)
    handles = [save(big, f"{directory}/{name}", client=client, background=True,
                    chunk_bytes=2**20, concurrency=1) for name in ("old.pt", "fresh.pt")]
    for handle in handles:
        handle.wait()
print("finished", flush=True)
"""


@pytest.mark.parametrize("route", ["direct", "filer"])
def test_killed_mid_save_leaves_nothing_partial(client: sd.Client, cluster: LocalCluster,
                                                unique_dir: str, route: str) -> None:
    old = {"step": torch.tensor(1), "w": torch.arange(100)}
    save(old, f"{unique_dir}/old.pt", client=client)
    old_entry = client.stat(f"{unique_dir}/old.pt")
    grpc_port = cluster.filer_grpc_port if route == "direct" else CLOSED_PORT
    saver = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVER, cluster.filer_url, cluster.master_url,
         str(grpc_port), unique_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert saver.stdout is not None and saver.stdout.readline() == "ready\n"
        written = volume_totals(cluster)[0]
        deadline = time.monotonic() + 30
        while volume_totals(cluster)[0] < written + 6:  # its first chunks landed
            assert saver.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        saver.send_signal(signal.SIGKILL)
    finally:
        saver.kill()
        output = saver.communicate()[0]
    assert saver.returncode == -signal.SIGKILL and "finished" not in output
    time.sleep(0.2)  # let the filer notice the broken upload
    assert client.listdir(unique_dir) == ["old.pt"]
    assert client.stat(f"{unique_dir}/old.pt") == old_entry
    assert_same(load(f"{unique_dir}/old.pt", client=client), old)
    with pytest.raises(NotFoundError):
        client.stat(f"{unique_dir}/fresh.pt")


EXITING_SAVER = r"""
import sys, torch
import seaweed_data as sd
from seaweed_data.torch import save
filer, master, grpc_port, path = sys.argv[1:5]
config = sd.Config(master=master, filer_grpc_port=int(grpc_port))
save({"w": torch.arange(1000)}, filer + path, config=config, background=True, chunk_bytes=1024)
"""


def test_exit_waits_for_background_saves(client: sd.Client, cluster: LocalCluster,
                                         unique_dir: str) -> None:
    path = f"{unique_dir}/at_exit.pt"
    subprocess.run([sys.executable, "-c", EXITING_SAVER, cluster.filer_url,
                    cluster.master_url, str(cluster.filer_grpc_port), path],
                   check=True, timeout=60)
    assert torch.equal(load(path, client=client)["w"], torch.arange(1000))


# --------------------------------------------------------------------------- JWT


def test_jwt_secured_cluster(tmp_path: Path) -> None:
    security = tmp_path / "security.toml"
    security.write_text('[jwt.signing]\nkey = "checkpoint-test-key"\n')
    with LocalCluster(security=security, stop_grace=1.0) as secured:
        config = sd.Config(master=secured.master_url, filer_grpc_port=secured.filer_grpc_port)
        expected = state_dict(3, seed=5)
        with sd.Client(secured.filer_url, config) as client:
            entry = save(expected, "/jwt/model.pt", client=client, chunk_bytes=MiB)
            assert len(entry.chunks) >= 3 and client.stats().get("upload_fallbacks", 0) == 0
            assert_same(load("/jwt/model.pt", client=client), expected)


def test_cancelled_upload_cleans_up(client: sd.Client, cluster: LocalCluster,
                                    unique_dir: str) -> None:
    core = client._async()
    before = volume_totals(cluster)[1]

    async def run() -> None:
        task = asyncio.ensure_future(upload(core, f"{unique_dir}/c.bin", os.urandom(64 * MiB),
                                            UploadOptions(chunk_bytes=MiB, concurrency=2)))
        while client.stats().get("upload_chunks", 0) < 2:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    LOOP.run(run())
    deadline = time.monotonic() + 10
    while client.stats().get("upload_chunks_deleted", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.stats()["upload_chunks_deleted"] >= 2
    assert volume_totals(cluster)[1] - before >= 2
    assert not client.exists(f"{unique_dir}/c.bin")
