"""Bad input: every defect raises a clear error naming the path (and the record's offset for
TFRecords) and what is wrong; ``on_error="skip"`` leaves bad samples out, logged and counted.

The defects are real files on a real filer: damaged TFRecord framing and checksums, broken
``.pt`` shards, non-image bytes and empty files in an image folder, a file deleted after the
listing, empty folders, bad URLs and bad option values. Tests marked ``xfail(strict=True)``
pin defects found here whose fix belongs to modules this work did not own (see the report of
issue #6); they start failing, as XPASS, the day the fix lands.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
import random
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import requests
import torch
from PIL import Image
from shard_files import framed, pt_bytes
from torch.utils.data import DataLoader

import seaweed_data as sd
from seaweed_data.core.cluster import LocalCluster
from seaweed_data.core.records import masked_crc
from seaweed_data.torch import SeaweedImageFolder, ShardDataset
from seaweed_data.torch.folder import pil_loader

RECORDS = [f"record-{i}-".encode() * (i + 3) for i in range(6)]


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (5, 4), (seed % 256, 7, 9)).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quick_worker_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a worker error, DataLoader waits this long for its workers (default 5 s)."""
    for module in (torch.utils.data._utils, torch.utils.data._utils.worker):
        monkeypatch.setattr(module, "MP_STATUS_CHECK_INTERVAL", 0.2)


@pytest.fixture(scope="module")
def root(cluster: LocalCluster) -> str:
    return f"/t/rel-input-{uuid.uuid4().hex[:8]}"


# -- TFRecord: every framing and checksum defect, at its record ------------------------------


def _flip(blob: bytes, at: int) -> bytes:
    damaged = bytearray(blob)
    damaged[at] ^= 0x01
    return bytes(damaged)


def _huge_length(blob: bytes, at: int) -> bytes:
    """Record at ``at`` claims 2**62 bytes, with a length CRC that matches the claim."""
    length = struct.pack("<Q", 1 << 62)
    header = length + struct.pack("<I", masked_crc(length))
    return blob[:at] + header + blob[at + 12:]


BLOB, OFFSETS = framed(RECORDS)
AT = OFFSETS[2]  # every defect hits record 2: records 0 and 1 come out first
BODY = len(RECORDS[2]) + 4  # data + its CRC
TFRECORD_DEFECTS: dict[str, tuple[bytes, str]] = {
    "length-crc": (_flip(BLOB, AT + 9), "corrupt record length (length CRC mismatch)"),
    "length-bytes": (_flip(BLOB, AT + 2), "corrupt record length (length CRC mismatch)"),
    "data-crc": (_flip(BLOB, AT + 12 + 3), "corrupt record data (data CRC mismatch)"),
    "footer-crc": (_flip(BLOB, AT + 12 + BODY - 1), "corrupt record data (data CRC mismatch)"),
    "cut-in-header": (BLOB[:AT + 5], "truncated record header (5 of 12 bytes)"),
    "cut-in-data": (BLOB[:AT + 12 + 4], f"truncated record body (4 of {BODY} bytes after "
                                        "the header)"),
    "cut-in-footer": (BLOB[:AT + 12 + BODY - 1],
                      f"truncated record body ({BODY - 1} of {BODY} bytes after the header)"),
    "huge-length": (_huge_length(BLOB, AT), "truncated record body"),
}


@pytest.fixture(scope="module")
def bad_tfrecords(cluster: LocalCluster, root: str) -> dict[str, str]:
    paths = {}
    with cluster.client() as client:
        for name, (data, _) in TFRECORD_DEFECTS.items():
            paths[name] = f"{root}/tfrecord/{name}.tfrecord"
            client.write(paths[name], data)
        compressed = gzip.compress(BLOB)
        paths["gzip-cut"] = f"{root}/tfrecord/gzip-cut.tfrecord.gz"
        client.write(paths["gzip-cut"], compressed[: len(compressed) * 2 // 3])
        paths["gzip-garbage"] = f"{root}/tfrecord/gzip-garbage.tfrecord.gz"
        # seeded: some garbage still inflates, and then a record's CRC catches it instead
        garbage = random.Random(1).randbytes(200)
        client.write(paths["gzip-garbage"], compressed[:20] + garbage + compressed[220:])
    return paths


@pytest.mark.parametrize("defect", sorted(TFRECORD_DEFECTS))
def test_tfrecord_defects_name_the_shard_the_offset_and_the_defect(
        cluster: LocalCluster, bad_tfrecords: dict[str, str], defect: str) -> None:
    path = bad_tfrecords[defect]
    _, what = TFRECORD_DEFECTS[defect]
    got: list[bytes] = []
    with ShardDataset(f"{cluster.filer_url}{path}", prefetch=0) as ds, \
            pytest.raises(sd.CorruptDataError) as caught:
        got.extend(ds)
    assert got == RECORDS[:2]  # nothing of the damaged record, nothing after it
    assert (caught.value.path, caught.value.offset) == (path, AT)
    assert str(caught.value).startswith(f"TFRecord {path}: record at byte offset {AT}: {what}")


@pytest.mark.parametrize(("name", "what"), [
    ("gzip-cut", "truncated GZIP stream"), ("gzip-garbage", "corrupt GZIP stream")])
def test_broken_compression_names_the_shard_and_the_offset(
        cluster: LocalCluster, bad_tfrecords: dict[str, str], name: str, what: str) -> None:
    path = bad_tfrecords[name]
    with ShardDataset(f"{cluster.filer_url}{path}") as ds, \
            pytest.raises(sd.CorruptDataError) as caught:
        list(ds)
    assert caught.value.path == path and caught.value.offset in OFFSETS
    assert f"TFRecord {path}: record at byte offset {caught.value.offset}: {what}" \
        in str(caught.value)


def test_a_tfrecord_defect_in_a_worker_reaches_the_main_process_with_its_offset(
        cluster: LocalCluster, bad_tfrecords: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    quick_worker_shutdown(monkeypatch)
    path = bad_tfrecords["length-crc"]
    ds = ShardDataset(f"{cluster.filer_url}{path}")
    batches = iter(DataLoader(ds, batch_size=1, num_workers=1))
    try:
        assert [next(batches), next(batches)] == [[RECORDS[0]], [RECORDS[1]]]
        with pytest.raises(sd.CorruptDataError, match=f"{path}: record at byte offset {AT}: "
                                                      r"corrupt record length"):
            next(batches)
    finally:
        batches._shutdown_workers()  # type: ignore[attr-defined]
        ds.close()


# -- .pt shards --------------------------------------------------------------------------------


class NotAllowed:
    """A class ``weights_only`` refuses to unpickle."""


PT_DEFECTS: dict[str, tuple[Callable[[], bytes], type[Exception], str]] = {
    "truncated": (lambda: pt_bytes(list(range(50)))[:300], sd.CorruptDataError,
                  r"cannot load \.pt shard {path} \(300 bytes; truncated or not a torch\.save "
                  r"file\?\)"),
    "garbage": (lambda: os.urandom(4000), sd.CorruptDataError,
                r"cannot load \.pt shard {path} \(4000 bytes; truncated"),
    "empty": (lambda: b"", sd.CorruptDataError, r"cannot load \.pt shard {path} \(0 bytes"),
    "scalar": (lambda: pt_bytes(7), sd.CorruptDataError,
               r"\.pt shard {path} holds a int; expected a list, a tuple or a non-empty dict"),
    "ragged": (lambda: pt_bytes({"x": torch.zeros(3, 2), "y": torch.zeros(4)}),
               sd.CorruptDataError, r"\.pt shard {path}: a dict shard needs columns of equal "
                                    r"length .* got lengths \{{'x': 3, 'y': 4\}}"),
    "refused": (lambda: pt_bytes([NotAllowed()]), pickle.UnpicklingError,
                r"{path}: Weights only load failed"),
}


@pytest.mark.parametrize("defect", sorted(PT_DEFECTS))
def test_pt_defects_name_the_shard_and_the_defect(cluster: LocalCluster, root: str,
                                                  defect: str) -> None:
    make, kind, pattern = PT_DEFECTS[defect]
    path = f"{root}/pt/{defect}.pt"
    with cluster.client() as client:
        client.write(path, make())
    with ShardDataset(f"{cluster.filer_url}{path}") as ds, \
            pytest.raises(kind, match=pattern.format(path=path.replace(".", r"\."))) as caught:
        list(ds)
    if isinstance(caught.value, sd.CorruptDataError):
        assert caught.value.path == path


# -- an image folder with bad files ----------------------------------------------------------


def checked(data: bytes) -> bytes:
    """A loader that decodes like the default one, but returns the bytes (to compare)."""
    pil_loader(data)
    return data


def collate_raw(batch: list[tuple[bytes, int]]) -> list[bytes]:
    return [data for data, _ in batch]


def wait_until_unreadable(cluster: LocalCluster, client: sd.Client, path: str) -> None:
    """Delete ``path`` on the filer and wait until its needle is gone from the volume server
    (the filer deletes chunks in the background, within about a second)."""
    [chunk] = client.stat(path).chunks
    client.delete(path)
    url = f"{cluster.volume_urls[0]}/{chunk.file_id}"
    deadline = time.monotonic() + 20
    while requests.get(url, timeout=5).status_code != 404:
        assert time.monotonic() < deadline, f"{url} still served"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def images(cluster: LocalCluster, root: str) -> dict[str, Any]:
    """``a`` and ``b`` with 10 good PNGs each, plus a text file named .jpg and an empty
    .png; the caller adds (and deletes) ``b/gone.png`` after listing."""
    top = f"{root}/images"
    good = {f"{top}/{cls}/{i:02d}.png": png(n * 10 + i)
            for n, cls in enumerate("ab") for i in range(10)}
    bad = {f"{top}/a/broken.jpg": b"this is not an image", f"{top}/b/empty.png": b""}
    with cluster.client() as client:
        for path, data in {**good, **bad}.items():
            client.write(path, data)
    return {"root": top, "good": good, "bad": sorted(bad)}


def folder_with_a_deleted_file(cluster: LocalCluster, images: dict[str, Any],
                               **options: Any) -> tuple[SeaweedImageFolder, str]:
    gone = f"{images['root']}/b/gone-{uuid.uuid4().hex[:6]}.png"
    with cluster.client() as client:
        client.write(gone, png(99))
        ds = SeaweedImageFolder(f"{cluster.filer_url}{images['root']}", **options)
        wait_until_unreadable(cluster, client, gone)
    return ds, gone


def index_of(ds: SeaweedImageFolder, path: str) -> int:
    return [p for p, _ in ds.samples].index(path)


def test_non_image_bytes_raise_naming_the_file_and_the_cause(cluster: LocalCluster,
                                                             images: dict[str, Any]) -> None:
    ds = SeaweedImageFolder(f"{cluster.filer_url}{images['root']}")
    try:
        broken, empty = images["bad"]
        with pytest.raises(OSError, match=f"cannot load '{broken}' \\(20 bytes\\): "
                                          "UnidentifiedImageError: cannot identify image"):
            ds[index_of(ds, broken)]
        with pytest.raises(OSError, match=f"cannot load '{empty}' \\(0 bytes\\)"):
            ds.__getitems__([0, index_of(ds, empty)])
    finally:
        ds.close()


def test_a_file_deleted_after_listing_raises_not_found_naming_it(
        cluster: LocalCluster, images: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    ds, gone = folder_with_a_deleted_file(cluster, images, loader=checked,
                                          is_valid_file=lambda p: p not in images["bad"])
    try:
        with pytest.raises(sd.NotFoundError, match=f"No such file or directory: '{gone}'"):
            ds[index_of(ds, gone)]
        quick_worker_shutdown(monkeypatch)
        loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_raw)
        batches = iter(loader)
        try:
            with pytest.raises(FileNotFoundError, match=gone):
                for _ in batches:
                    pass
        finally:
            batches._shutdown_workers()  # type: ignore[attr-defined]
    finally:
        ds.close()


def test_skip_policy_leaves_out_bad_samples_counts_and_names_them(
        cluster: LocalCluster, images: dict[str, Any]) -> None:
    ds, gone = folder_with_a_deleted_file(cluster, images, loader=checked, on_error="skip")
    try:
        for workers in (2, 0):
            loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=workers,
                                collate_fn=collate_raw)
            got = [data for batch in loader for data in batch]
            assert Counter(got) == Counter(images["good"].values())  # each good one once
        assert ds.stats()["samples_skipped"] == 2 * 3  # both epochs: 3 bad samples each
        with pytest.raises(sd.NotFoundError, match=gone):
            ds[index_of(ds, gone)]  # one index cannot be skipped: it raises
        assert ds.stats()["samples_skipped"] == 6
    finally:
        ds.close()


def test_skip_policy_logs_each_skip_with_its_path(cluster: LocalCluster,
                                                  images: dict[str, Any],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    ds, gone = folder_with_a_deleted_file(cluster, images, loader=checked, on_error="skip")
    try:
        bad = [index_of(ds, p) for p in [*images["bad"], gone]]
        with caplog.at_level(logging.WARNING, logger="seaweed_data.torch.folder"):
            batch = ds.__getitems__([0, *bad, 1])
        assert [data for data, _ in batch] == [ds.__getitems__([i])[0][0] for i in (0, 1)]
        skips = [r.getMessage() for r in caplog.records if "on_error='skip'" in r.getMessage()]
        by_path = {path: [m for m in skips if f"({path})" in m]
                   for path in [*images["bad"], gone]}
        assert len(skips) == 3 and all(len(found) == 1 for found in by_path.values()), skips
        assert f"No such file or directory: '{gone}'" in by_path[gone][0]
        for path in images["bad"]:
            assert "cannot identify image file" in by_path[path][0]
        assert ds.stats()["samples_skipped"] == 3
    finally:
        ds.close()


def test_skip_policy_with_batches_of_one_gives_empty_batches(cluster: LocalCluster,
                                                             images: dict[str, Any]) -> None:
    ds = SeaweedImageFolder(f"{cluster.filer_url}{images['root']}", loader=checked,
                            on_error="skip")
    try:
        loader = DataLoader(ds, batch_size=1, num_workers=0, collate_fn=collate_raw)
        batches = list(loader)
        assert len(batches) == len(ds) and sum(1 for b in batches if not b) == 2
    finally:
        ds.close()


def test_skip_policy_does_not_hide_transform_errors(cluster: LocalCluster,
                                                   images: dict[str, Any]) -> None:
    def transform(image: Any) -> Any:
        raise RuntimeError("a bug in the transform")

    ds = SeaweedImageFolder(f"{cluster.filer_url}{images['root']}", transform=transform,
                            on_error="skip")
    try:
        with pytest.raises(RuntimeError, match="a bug in the transform"):
            ds.__getitems__([0, 1])
        assert ds.stats()["samples_skipped"] == 0
    finally:
        ds.close()


def test_skip_policy_does_not_hide_network_errors(cluster: LocalCluster,
                                                  images: dict[str, Any]) -> None:
    """A volume server that does not answer says nothing about a sample: it raises."""
    config = sd.Config(master=cluster.master_url, retries=1, backoff_base=0.01,
                       memory_cache_bytes=0, volume_timeout=0.3)
    ds = SeaweedImageFolder(f"{cluster.filer_url}{images['root']}", on_error="skip",
                            config=config)
    try:
        assert len(ds.__getitems__([0, 1])) == 2
        cluster.pause_volume(0)  # healed after the test
        with pytest.raises(sd.TransportError):  # a timeout, however the engine words it
            ds.__getitems__([2, 3])
        assert ds.stats()["samples_skipped"] == 0
    finally:
        ds.close()


# -- empty and missing folders, files where folders belong -----------------------------------


def test_empty_and_missing_folders_say_what_is_missing_where(cluster: LocalCluster,
                                                             root: str) -> None:
    top = f"{root}/empty"
    with cluster.client() as client:
        client.write(f"{top}/only-a-file.txt", b"x")
        client.write(f"{top}/cls/notes.txt", b"x")  # a class folder without an image
        client.write(f"{top}/vanished/x.png", b"x")
        client.delete(f"{top}/vanished/x.png")  # an empty class folder
    url = cluster.filer_url
    with pytest.raises(FileNotFoundError,
                       match=f"Found no valid file for the classes cls, vanished in {top}\\."):
        SeaweedImageFolder(f"{url}{top}")
    with pytest.raises(FileNotFoundError, match=f"Couldn't find any class folder in {top}/cls"):
        SeaweedImageFolder(f"{url}{top}/cls")
    with pytest.raises(sd.NotFoundError, match=f"No such file or directory: '{top}/nothing'"):
        SeaweedImageFolder(f"{url}{top}/nothing")
    with pytest.raises(sd.NotDirectoryError, match=f"Not a directory: '{top}/only-a-file.txt'"):
        SeaweedImageFolder(f"{url}{top}/only-a-file.txt")
    with ShardDataset(f"{url}{top}/vanished/*.pt") as shards, \
            pytest.raises(sd.NotFoundError, match=f"'{top}/vanished/\\*.pt' \\(no file matches"):
        list(shards)
    with ShardDataset(f"{url}{top}/missing.tfrecord") as shards, \
            pytest.raises(sd.NotFoundError, match=f"'{top}/missing.tfrecord'"):
        list(shards)


# -- bad locations and bad options -----------------------------------------------------------


BAD_LOCATIONS = {
    "ftp://127.0.0.1:1/data": "unsupported location 'ftp://127.0.0.1:1/data",
    "data/train": "a bare path must be absolute (start with '/'): 'data/train",
    "http://127.0.0.1:99999/data": "bad port in filer address 'http://127.0.0.1:99999'",
    "http://127.0.0.1:1/data?x=1": "a location has no query or fragment: "
                                   "'http://127.0.0.1:1/data?x=1",
    "/data/../../etc": "path climbs above the root: '/data/../../etc",
    "/data/a\x00b": "NUL byte in path '/data/a\\x00b",
    "seaweedfs:///data": "unsupported location 'seaweedfs:///data",
}


@pytest.mark.parametrize("location", sorted(BAD_LOCATIONS))
def test_bad_locations_are_refused_by_every_entry_point(location: str) -> None:
    """The folder and the shard dataset name the location (the shard one with its .pt) and
    what is wrong with it; a client refuses a bad filer address, naming it."""
    message = BAD_LOCATIONS[location]
    with pytest.raises(sd.InvalidLocationError) as folder:
        SeaweedImageFolder(location)
    assert str(folder.value).startswith(message)
    with pytest.raises(sd.InvalidLocationError) as shards:
        ShardDataset(f"{location}.pt")
    assert str(shards.value).startswith(message)
    if "://" in location:
        with pytest.raises(sd.InvalidLocationError) as client:
            sd.Client(location)
        assert repr(location.split("?")[0])[:-1] in str(client.value)


def test_an_unreachable_filer_fails_fast_naming_it_and_leaves_nothing_behind() -> None:
    port = free_port()
    threads = {t.name for t in threading.enumerate()}
    start = time.monotonic()
    with pytest.raises(sd.UnreachableError, match=f"cannot connect to 127.0.0.1:{port}"):
        SeaweedImageFolder(f"http://127.0.0.1:{port}/data",
                           config=sd.Config(retries=2, backoff_base=0.01))
    assert time.monotonic() - start < 5
    time.sleep(0.2)
    leftover = {t.name for t in threading.enumerate()} - threads
    assert not leftover, leftover


@pytest.mark.parametrize(("options", "message"), [
    ({"on_error": "ignore"}, "on_error must be 'raise' or 'skip', got 'ignore'"),
    ({"on_error": None}, "on_error must be 'raise' or 'skip', got None"),
])
def test_bad_folder_options_fail_before_any_io(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):  # an unreachable filer: no I/O happened
        SeaweedImageFolder(f"http://127.0.0.1:{free_port()}/data", **options)


@pytest.mark.parametrize(("options", "message"), [
    ({"prefetch": -1}, "prefetch must be an int >= 0, got -1"),
    ({"shuffle_buffer": 0}, "shuffle_buffer must be an int >= 1, got 0"),
    ({"seed": "7"}, "seed must be an int, got '7'"),
    ({"on_error": "warn"}, "on_error must be 'raise' or 'skip', got 'warn'"),
    ({"compression": "LZ4"}, "compression must be None, '', 'GZIP' or 'ZLIB', got 'LZ4'"),
])
def test_bad_shard_options_fail_in_the_constructor(options: dict[str, Any],
                                                   message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShardDataset(f"http://127.0.0.1:{free_port()}/data/x.tfrecord", **options)


@pytest.mark.parametrize("prefetch", [-1, 2.5, "8"])
def test_bad_folder_prefetch_is_refused(prefetch: Any) -> None:
    with pytest.raises(ValueError, match="prefetch"):
        SeaweedImageFolder(f"http://127.0.0.1:{free_port()}/data", prefetch=prefetch)


@pytest.mark.parametrize("options", [
    {"retries": 2.5}, {"memory_cache_bytes": 1.5}, {"read_timeout": float("nan")},
    {"disk_cache_bytes": float("nan")}, {"filer_grpc_port": 70000},
    {"filer_grpc_port": -3}, {"master": "http://127.0.0.1:99999"},
], ids=str)
def test_bad_config_values_are_config_errors(options: dict[str, Any]) -> None:
    with pytest.raises(sd.ConfigError, match=next(iter(options))):
        sd.Config(**options)
