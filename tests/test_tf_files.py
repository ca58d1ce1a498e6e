"""seaweed_data.tf.FileDataset against a real SeaweedFS: (path, bytes) pairs in order, with the
engine prefetching ahead, feeding tf.io.decode_jpeg."""

from __future__ import annotations

import random
from typing import Any

import pytest

tf = pytest.importorskip("tensorflow")

import seaweed_data as sd  # noqa: E402
from seaweed_data.tf import FileDataset  # noqa: E402
from seaweed_data.tf import files as tf_files  # noqa: E402
from seaweed_data.tf.clients import SourceClients  # noqa: E402


@pytest.fixture
def folder(cluster: Any, unique_dir: str) -> dict[str, bytes]:
    """70 small files in two directories (more than one read batch), keyed by location."""
    rng = random.Random(3)
    contents = {}
    with cluster.client() as client:
        for i in range(70):
            path = f"{unique_dir}/{'ab'[i % 2]}/file-{i:03d}.bin"
            data = rng.randbytes(rng.randrange(0, 3000))
            client.write(path, data)
            contents[cluster.filer_url + path] = data
    return contents


def files(cluster: Any, paths: Any, **options: Any) -> Any:
    return FileDataset(paths, config=sd.Config(master=cluster.master_url), **options)


def pairs(dataset: Any) -> list[tuple[str, bytes]]:
    return [(path.decode(), data) for path, data in dataset.as_numpy_iterator()]


def delta(before: dict[str, int]) -> dict[str, int]:
    after = sd.stats()
    return {key: after.get(key, 0) - before.get(key, 0) for key in after}


def test_bytes_equal_and_order_kept(cluster, folder, monkeypatch):
    monkeypatch.setattr(tf_files, "READ_BATCH", 16)
    order = list(folder)[::-1]  # not the sorted order: the given one
    ds = files(cluster, order)
    assert ds.element_spec == (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string))
    before = sd.stats()
    assert pairs(ds) == [(path, folder[path]) for path in order]
    counts = delta(before)
    assert counts["prefetch_used"] > 0 and counts["prefetch_wasted"] == 0
    assert pairs(files(cluster, order[:5], prefetch=0)) == [(p, folder[p]) for p in order[:5]]
    assert pairs(files(cluster, tf.constant(order[:3]))) == [(p, folder[p]) for p in order[:3]]


def test_globs_expand_sorted_on_the_filer(cluster, folder, unique_dir):
    pattern = f"{cluster.filer_url}{unique_dir}/*/file-00*.bin"
    expected = sorted(p for p in folder if "/file-00" in p)
    assert pairs(files(cluster, pattern)) == [(p, folder[p]) for p in expected]
    one = next(iter(folder))
    assert pairs(files(cluster, [one, pattern]))[0] == (one, folder[one])


def test_decode_jpeg_pipeline(cluster, unique_dir):
    images = [tf.cast(tf.fill([8 + i, 6, 3], 40 * i), tf.uint8) for i in range(3)]
    with cluster.client() as client:
        for i, image in enumerate(images):
            client.write(f"{unique_dir}/img-{i}.jpg", tf.io.encode_jpeg(image).numpy())
    ds = files(cluster, f"{cluster.filer_url}{unique_dir}/img-*.jpg")
    decoded = ds.map(lambda path, data: tf.io.decode_jpeg(data, channels=3))
    assert [tuple(image.shape) for image in decoded] == [(8, 6, 3), (9, 6, 3), (10, 6, 3)]


def test_errors(cluster, unique_dir):
    with pytest.raises(tf.errors.OpError, match="No such file or directory"):
        pairs(files(cluster, f"{cluster.filer_url}{unique_dir}/missing.bin"))
    with pytest.raises(tf.errors.OpError, match="no file matches this glob"):
        pairs(files(cluster, f"{cluster.filer_url}{unique_dir}/none-*"))
    with pytest.raises(ValueError, match="prefetch"):
        files(cluster, "/x", prefetch=-1)
    with pytest.raises(sd.InvalidLocationError):
        files(cluster, "relative/path")

    @tf.function
    def in_graph(names: Any) -> Any:
        return files(cluster, names)

    with pytest.raises(TypeError, match="known in Python"):
        in_graph(tf.constant(["/x"]))


def test_file_source_reads_in_order_across_filers(cluster, folder):
    """Called directly (TensorFlow runs it on threads coverage cannot see); two spellings of
    the filer are two clients."""
    names = list(folder)[:6]
    other = cluster.filer_url.replace("127.0.0.1", "localhost")
    names[1::2] = [name.replace(cluster.filer_url, other) for name in names[1::2]]
    clients = SourceClients(sd.Config(master=cluster.master_url))
    source = tf_files.FileSource(names, clients, prefetch=4)
    got = [(str(p), d) for paths, datas in source.batches() for p, d in zip(paths, datas,
                                                                             strict=True)]
    assert got == [(name, folder[name.replace(other, cluster.filer_url)]) for name in names]
    assert len(clients.clients()) == 2
    clients.close()
