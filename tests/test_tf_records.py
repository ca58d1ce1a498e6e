"""seaweed_data.tf.TFRecordDataset against a real SeaweedFS, compared record for record with
tf.data.TFRecordDataset over local copies of the same files."""

from __future__ import annotations

import gc
import io
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shard_files import framed

tf = pytest.importorskip("tensorflow")

import seaweed_data as sd  # noqa: E402
from seaweed_data.core.loop import LOOP  # noqa: E402
from seaweed_data.core.records import iter_records, write_records  # noqa: E402
from seaweed_data.tf import TFRecordDataset, framing  # noqa: E402
from seaweed_data.tf import records as tf_records  # noqa: E402
from seaweed_data.tf.clients import SourceClients  # noqa: E402
from seaweed_data.tf.paths import glob_matches  # noqa: E402
from seaweed_data.tf.records import RecordSource, record_windows  # noqa: E402
from seaweed_data.tf.shard_reads import ShardReads  # noqa: E402


def _two_logical_cpus() -> None:
    """Two CPU devices for MirroredStrategy; only possible before TensorFlow runs an op."""
    try:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    except RuntimeError:  # pragma: no cover - another module ran an op first
        pass


_two_logical_cpus()
AUTO_SHARD = tf.data.experimental.AutoShardPolicy


class Shards:
    """Shards written both to SeaweedFS (``remote``: full locations) and to ``local``."""

    def __init__(self, cluster: Any, root: str, local_dir: Path) -> None:
        self.cluster, self.root, self.local_dir = cluster, root, local_dir
        self.remote: dict[str, list[str]] = {}
        self.local: dict[str, list[str]] = {}
        self.records: dict[str, list[list[bytes]]] = {}

    def add(self, kind: str, name: str, records: list[bytes], compression: str = "",
            data: bytes | None = None) -> None:
        if data is None:
            out = io.BytesIO()
            write_records(out, records, compression=compression)
            data = out.getvalue()
        with self.cluster.client() as client:
            client.write(f"{self.root}/{name}", data)
        (self.local_dir / name).write_bytes(data)
        self.remote.setdefault(kind, []).append(f"{self.cluster.filer_url}{self.root}/{name}")
        self.local.setdefault(kind, []).append(str(self.local_dir / name))
        self.records.setdefault(kind, []).append(records)


def random_records(rng: random.Random, count: int) -> list[bytes]:
    return [rng.randbytes(rng.choice([0, 1, 7, 100, 900, 3000])) for _ in range(count)]


@pytest.fixture(scope="module")
def shards(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Shards:
    rng = random.Random(7)
    made = Shards(cluster, f"/t/tfrecords-{uuid.uuid4().hex[:8]}",
                  tmp_path_factory.mktemp("tfrecords"))
    for i, count in enumerate([40, 3, 25, 60, 11, 30]):
        made.add("plain", f"part-{i}.tfrecord", random_records(rng, count))
    for i in range(3):
        made.add("gzip", f"zipped-{i}.tfrecord.gz", random_records(rng, 20 + i), "GZIP")
        made.add("zlib", f"deflated-{i}.tfrecord.zz", random_records(rng, 15 + i), "ZLIB")
    made.add("empty", "empty.tfrecord", [])
    return made


def config(cluster: Any, **options: Any) -> sd.Config:
    return sd.Config(master=cluster.master_url, **options)


def ours(cluster: Any, filenames: Any, *args: Any, **options: Any) -> Any:
    return TFRecordDataset(filenames, *args, config=config(cluster), **options)


def values(dataset: Any) -> list[Any]:
    return list(dataset.as_numpy_iterator())


def delta(before: dict[str, int]) -> dict[str, int]:
    after = sd.stats()
    return {key: after.get(key, 0) - before.get(key, 0) for key in after}


# -- the same records as tf.data ---------------------------------------------------------------


def test_same_records_order_and_spec_as_tf_data(cluster, shards):
    local = tf.data.TFRecordDataset(shards.local["plain"])
    ds = ours(cluster, shards.remote["plain"])
    assert ds.element_spec == local.element_spec == tf.TensorSpec([], tf.string)
    expected = values(local)
    assert expected == [r for records in shards.records["plain"] for r in records]
    assert values(ds) == expected
    assert values(ds) == expected  # a second iteration of the same dataset
    one = shards.remote["plain"][2].replace("http://", "seaweedfs://")
    assert values(ours(cluster, one)) == shards.records["plain"][2]


def test_bare_paths_use_seaweed_filer(cluster, shards, monkeypatch):
    monkeypatch.setenv("SEAWEED_FILER", cluster.filer_url)
    bare = [name[len(cluster.filer_url):] for name in shards.remote["plain"][:2]]
    assert values(ours(cluster, bare)) == values(tf.data.TFRecordDataset(
        shards.local["plain"][:2]))


@pytest.mark.parametrize("kind,compression", [("gzip", "GZIP"), ("zlib", "ZLIB")])
def test_compressed_files(cluster, shards, kind, compression):
    expected = values(tf.data.TFRecordDataset(shards.local[kind], compression))
    assert values(ours(cluster, shards.remote[kind], compression)) == expected
    assert values(ours(cluster, shards.remote[kind], compression, num_parallel_reads=2)) == \
        values(tf.data.TFRecordDataset(shards.local[kind], compression, num_parallel_reads=2))


def test_glob_expands_on_the_filer_sorted(cluster, shards):
    pattern = f"{cluster.filer_url}{shards.root}/part-*.tfrecord"
    expected = values(tf.data.TFRecordDataset(sorted(shards.local["plain"])))
    assert values(ours(cluster, pattern)) == expected
    mixed = [shards.remote["empty"][0], pattern.replace("part-*", "part-[45]")]
    assert values(ours(cluster, mixed)) == values(tf.data.TFRecordDataset(
        shards.local["plain"][4:6]))
    nothing = ours(cluster, pattern.replace("part-*", "nothing-*"))
    with pytest.raises(tf.errors.OpError, match="no file matches this glob"):
        values(nothing)


@pytest.mark.parametrize("parallel", [1, 2, 4])
def test_num_parallel_reads_interleaves_like_tf_data(cluster, shards, parallel):
    expected = values(tf.data.TFRecordDataset(shards.local["plain"],
                                              num_parallel_reads=parallel))
    assert values(ours(cluster, shards.remote["plain"], num_parallel_reads=parallel)) == \
        expected


def test_nondeterministic_parallel_reads_give_every_record_once(cluster, shards):
    options = tf.data.Options()
    options.deterministic = False
    ds = ours(cluster, shards.remote["plain"], num_parallel_reads=3).with_options(options)
    expected = Counter(r for records in shards.records["plain"] for r in records)
    assert Counter(values(ds)) == expected
    autotuned = ours(cluster, shards.remote["plain"], num_parallel_reads=tf.data.AUTOTUNE)
    assert Counter(values(autotuned)) == expected


def test_batch_prefetch_shard_and_an_empty_file(cluster, shards):
    names = shards.remote["plain"][:3] + shards.remote["empty"] + shards.remote["plain"][3:]
    local = shards.local["plain"][:3] + shards.local["empty"] + shards.local["plain"][3:]
    batches = ours(cluster, names).batch(7).prefetch(2)
    expected = tf.data.TFRecordDataset(local).batch(7)
    assert [b.tolist() for b in values(batches)] == [b.tolist() for b in values(expected)]
    for index in range(3):
        assert values(ours(cluster, names).shard(3, index)) == \
            values(tf.data.TFRecordDataset(local).shard(3, index))
    assert values(ours(cluster, shards.remote["empty"])) == []
    assert values(ours(cluster, [])) == []


def test_string_tensor_and_dataset_inputs(cluster, shards):
    names = shards.remote["plain"][:4]
    expected = values(tf.data.TFRecordDataset(shards.local["plain"][:4]))
    assert values(ours(cluster, tf.constant(names))) == expected
    assert values(ours(cluster, tf.reshape(tf.constant(names), [2, 2]))) == expected
    assert values(ours(cluster, np.array(names))) == expected
    assert values(ours(cluster, tf.data.Dataset.from_tensor_slices(names))) == expected
    assert values(ours(cluster, [name.encode() for name in names])) == expected


def test_inside_tf_function(cluster, shards):
    names = shards.remote["plain"]
    expected = [r for records in shards.records["plain"] for r in records]
    count, size = len(expected), sum(len(r) for r in expected)

    def totals(ds: Any) -> Any:
        return ds.reduce((np.int64(0), np.int64(0)), lambda acc, record: (
            acc[0] + 1, acc[1] + tf.cast(tf.strings.length(record), tf.int64)))

    built_outside = ours(cluster, names, num_parallel_reads=2)
    assert [int(x) for x in tf.function(totals)(built_outside)] == [count, size]

    @tf.function
    def built_inside() -> Any:
        return totals(ours(cluster, names))

    assert [int(x) for x in built_inside()] == [count, size]

    @tf.function
    def from_graph_tensor(filenames: Any) -> Any:
        return totals(ours(cluster, filenames))

    assert [int(x) for x in from_graph_tensor(tf.constant(names))] == [count, size]


# -- tf.distribute ------------------------------------------------------------------------------


def auto_sharded(dataset: Any, policy: Any, workers: int, index: int) -> Any:
    from tensorflow.python.data.experimental.ops.distribute import _AutoShardDataset

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return _AutoShardDataset(dataset.with_options(options), workers, index)


def test_file_auto_sharding_shards_the_files(cluster, shards):
    """The rewrite tf.distribute applies per worker: FILE (and AUTO) give each worker whole
    files, and each worker announces and fetches only its own."""
    for policy in (AUTO_SHARD.FILE, AUTO_SHARD.AUTO):
        for worker in range(2):
            before = sd.stats()
            got = values(auto_sharded(ours(cluster, shards.remote["plain"]), policy, 2, worker))
            expected = values(tf.data.TFRecordDataset(shards.local["plain"][worker::2]))
            assert got == expected
            counts = delta(before)
            assert counts["tf_files_streamed"] + counts["tf_files_prefetched"] == 3
            assert counts["prefetch_issued"] == counts["prefetch_used"] == 2


def test_data_auto_sharding_splits_the_records(cluster, shards):
    expected = values(tf.data.TFRecordDataset(shards.local["plain"]))
    parts = [values(auto_sharded(ours(cluster, shards.remote["plain"]), AUTO_SHARD.DATA, 3, i))
             for i in range(3)]
    assert parts == [expected[i::3] for i in range(3)]


def test_mirrored_strategy_gives_each_record_to_one_replica(cluster, shards):
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:  # pragma: no cover - TensorFlow was initialised by another module
        pytest.skip("needs two logical CPU devices")
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    ds = ours(cluster, shards.remote["plain"]).batch(8)
    seen = []
    for batch in strategy.experimental_distribute_dataset(ds):
        parts = strategy.experimental_local_results(batch)
        assert len(parts) == 2
        for part in parts:
            seen += part.numpy().tolist()
    assert Counter(seen) == Counter(r for records in shards.records["plain"] for r in records)


# -- errors -------------------------------------------------------------------------------------


def offsets(records: list[bytes]) -> list[int]:
    starts, position = [], 0
    for record in records:
        starts.append(position)
        position += 16 + len(record)
    return starts


@pytest.mark.parametrize("position", [0, 1])
def test_a_corrupt_record_names_the_file_and_offset(cluster, unique_dir, position):
    """The corrupt file streams (position 0) or arrives prefetched (position 1)."""
    records = [b"a" * 100, b"b" * 50, b"c" * 70]
    data = bytearray(framed(records)[0])
    bad_at = offsets(records)[2]
    data[bad_at + 12 + 5] ^= 0xFF
    with cluster.client() as client:
        client.write(f"{unique_dir}/good.tfrecord", framed([b"x"])[0])
        client.write(f"{unique_dir}/bad.tfrecord", bytes(data))
    names = [f"{cluster.filer_url}{unique_dir}/{n}.tfrecord" for n in ("good", "bad")]
    bad_name = names.pop(1)
    names.insert(position, bad_name)
    iterator = iter(ours(cluster, names))
    seen = []
    with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.UnknownError)) as caught:
        for record in iterator:
            seen.append(record.numpy())
    message = str(caught.value)
    assert f"TFRecord {bad_name}: record at byte offset {bad_at}" in message
    assert "data CRC mismatch" in message
    assert b"c" * 70 not in seen and records[0] in seen


def test_truncated_and_corrupt_compressed_files(cluster, unique_dir):
    records = [b"r" * 300, b"s" * 200]
    cut = framed(records)[0][:offsets(records)[1] + 30]
    zipped = io.BytesIO()
    write_records(zipped, records, compression="GZIP")
    with cluster.client() as client:
        client.write(f"{unique_dir}/cut.tfrecord", cut)
        client.write(f"{unique_dir}/cut.tfrecord.gz", zipped.getvalue()[:-9])
    name = f"{cluster.filer_url}{unique_dir}/cut.tfrecord"
    with pytest.raises(tf.errors.OpError, match=rf"{name}: record at byte offset 316: "
                                                r"truncated record body"):
        values(ours(cluster, [name]))
    with pytest.raises(tf.errors.OpError, match=r"cut\.tfrecord\.gz: record at byte offset "
                                                r"\d+: truncated GZIP stream"):
        values(ours(cluster, [name + ".gz"], "GZIP"))


def test_missing_file_and_bad_arguments(cluster, shards, unique_dir):
    missing = f"{cluster.filer_url}{unique_dir}/missing.tfrecord"
    with pytest.raises(tf.errors.OpError, match=r"No such file or directory.*missing"):
        values(ours(cluster, [missing]))
    seen = []  # a prefetched file is looked up early; its error still comes in its turn
    with pytest.raises(tf.errors.OpError, match=r"No such file or directory.*missing"):
        for record in ours(cluster, [*shards.remote["plain"][:2], missing]):
            seen.append(record.numpy())
    assert seen == shards.records["plain"][0] + shards.records["plain"][1]
    with pytest.raises(ValueError, match="compression_type"):
        ours(cluster, missing, "BZIP2")
    for bad in ({"num_parallel_reads": 0}, {"buffer_size": -1}, {"prefetch": -1},
                {"num_parallel_reads": True}):
        with pytest.raises(ValueError):
            ours(cluster, missing, **bad)
    with pytest.raises(sd.InvalidLocationError):
        ours(cluster, "ftp://host/x.tfrecord")
    with pytest.raises(TypeError):
        ours(cluster, tf.data.Dataset.range(3))
    with pytest.raises(TypeError):
        ours(cluster, tf.constant([1, 2]))
    with pytest.raises(TypeError):
        ours(cluster, 42)
    with pytest.raises(TypeError):
        ours(cluster, [missing, 42])


# -- prefetching --------------------------------------------------------------------------------


def test_first_file_streams_and_the_next_ones_are_prefetched(cluster, shards):
    names = shards.remote["plain"]
    before = sd.stats()
    assert len(values(ours(cluster, names))) == sum(map(len, shards.records["plain"]))
    counts = delta(before)
    assert counts["tf_files_streamed"] == 1
    assert counts["tf_files_prefetched"] == len(names) - 1
    assert counts["prefetch_issued"] == counts["prefetch_used"] == len(names) - 1
    assert counts["prefetch_wasted"] == 0
    before = sd.stats()
    values(ours(cluster, names, num_parallel_reads=3))
    counts = delta(before)
    assert counts["tf_files_streamed"] == 3
    assert counts["prefetch_used"] == len(names) - 3 and counts["prefetch_wasted"] == 0
    before = sd.stats()
    values(ours(cluster, names, prefetch=0))
    counts = delta(before)
    assert counts["tf_files_streamed"] == len(names) and counts["prefetch_issued"] == 0


def test_iterating_again_reads_prefetched_files_from_the_cache(cluster, shards):
    ds = ours(cluster, shards.remote["plain"])
    assert len(values(ds.take(5))) == 5  # an abandoned iteration: its hints are dropped
    first = values(ds)
    before = sd.stats()
    assert values(ds) == first
    counts = delta(before)
    assert counts["cache_hits"] == len(shards.remote["plain"]) - 1
    assert counts["prefetch_issued"] == 0
    assert values(ds.repeat(2)) == first + first


def test_files_opened_out_of_order_are_claimed_in_announced_order(cluster, shards):
    """A parallel interleave may open files out of order: the engine still sees the claims
    in the announced order, so no prefetch is wasted."""
    clients = SourceClients(config(cluster, prefetch_items=4))
    reads = ShardReads(clients, streams=1, prefetch=4)
    names = shards.remote["plain"][:5]
    for number, name in enumerate(names):
        reads.announce(number, name)
    contents = {}
    for number in (0, 3, 1, 4, 2):
        with reads.open(number, names[number]) as stream:
            contents[number] = stream.read()
    counts = clients.stats()
    assert counts["tf_files_streamed"] == 1 and counts["tf_files_prefetched"] == 4
    assert counts["prefetch_used"] == 4 and counts["prefetch_wasted"] == 0
    for number, name in enumerate(names):
        assert contents[number] == Path(shards.local["plain"][number]).read_bytes(), name
    reads.announce(0, names[0])  # a new iteration
    assert clients.expand(names[0]) == [names[0]]
    clients.close()


def cutting_maps(dataset: Any) -> tuple[list[str], list[str]]:
    """The functions that cut records out (``Substr``), and those of the top-level maps."""
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    cutters = [f.signature.name for f in graph.library.function
               if any(node.op == "Substr" for node in f.node_def)]
    maps = [node.attr["f"].func.name for node in graph.node
            if node.op in ("MapDataset", "ParallelMapDatasetV2")]
    return cutters, maps


def test_one_map_cuts_the_records_of_every_file(cluster, shards):
    """tf.data parallelizes and autotunes each map: one per file cost more than the cutting
    (benchmarks/README.md). Without num_parallel_reads the records are cut once, after the
    files; with it, inside each file's dataset (its records alternate with other files')."""
    cutters, maps = cutting_maps(ours(cluster, shards.remote["plain"]))
    assert len(cutters) == 1 and cutters[0] in maps
    cutters, maps = cutting_maps(ours(cluster, shards.remote["plain"], num_parallel_reads=2))
    assert len(cutters) == 1 and cutters[0] not in maps


# -- the Python side, called directly (TensorFlow runs it on threads coverage cannot see) -------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=12), st.sampled_from(["ok", "flip", "cut"]),
       st.integers(0, 10**6), st.sampled_from([1, 16, 200, 1 << 22]),
       st.sampled_from([1, 100, 1 << 22]))
def test_framing_fast_path_matches_iter_records(records, damage, where, window, max_bytes):
    data = bytearray(framed(records)[0])
    if damage == "flip" and data:
        data[where % len(data)] ^= 0x10
    elif damage == "cut" and data:
        data = data[:where % len(data)]
    stream = io.BytesIO(bytes(data))

    def reread() -> io.BytesIO:
        stream.seek(0)
        return stream

    expected, expected_error = collect(iter_records(io.BytesIO(bytes(data)), path="/f"))
    with patch.object(framing, "WINDOW", window):
        got, error = collect(r for window in framing.frame_windows(stream, "/f", reread,
                                                                   max_bytes)
                             for r in window.records())
    assert error == expected_error
    assert got == expected


def collect(records: Any) -> tuple[list[bytes], str | None]:
    out = []
    try:
        for record in records:
            out.append(record)
    except sd.CorruptDataError as exc:
        return out, str(exc)
    return out, None


def test_a_file_that_changes_while_read_is_reported():
    data = framed([b"a" * 10, b"b" * 10])[0]
    damaged = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(sd.CorruptDataError, match="changed while it was read"):
        list(framing.frame_windows(io.BytesIO(damaged), "/f", lambda: io.BytesIO(data)))


def test_record_source_batches_streamed_prefetched_and_compressed(cluster, shards):
    clients = SourceClients(config(cluster))
    source = RecordSource(clients, "", streams=1, prefetch=2)
    names = shards.remote["plain"][:3]
    for number, name in enumerate(names):
        assert source._announce_py(np.int64(number), name.encode()) == number
    for number, name in enumerate(names):
        windows = list(source.windows(np.int64(number), name.encode()))
        assert [r for w in windows for r in w.records()] == shards.records["plain"][number]
    assert clients.stats()["tf_files_streamed"] == 1
    zipped = RecordSource(clients, "GZIP", streams=1, prefetch=0)
    name = shards.remote["gzip"][1]
    assert [r for w in zipped.windows(np.int64(0), name.encode()) for r in w.records()] == \
        shards.records["gzip"][1]
    bad = shards.remote["plain"][0].replace("part-0", "direct-bad")
    with cluster.client() as client:
        client.write(clients.locate(bad)[1], framed([b"q" * 40])[0][:-1] + b"\0")
    with pytest.raises(sd.CorruptDataError, match="record at byte offset 0: corrupt record"):
        list(source.windows(np.int64(0), bad.encode()))
    assert [w.records() for w in record_windows([b"x", b"", b"yz"], max_records=2)] == \
        [[b"x", b""], [b"yz"]]
    assert [len(w.starts) for w in record_windows([b"x" * 10] * 3, max_bytes=15)] == [2, 1]
    clients.close()


def test_reading_a_file_raises_malloc_thresholds_unless_told_not_to(cluster, shards,
                                                                   monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(tf_records, "reuse_large_allocations", lambda: calls.append(1))
    names = shards.remote["plain"][:2]
    left = TFRecordDataset(names, config=config(cluster, reuse_large_allocations=False))
    assert len(values(left)) == 43 and calls == []
    assert len(values(ours(cluster, names))) == 43 and len(calls) == 2


def test_glob_expansion_keeps_the_pattern_form(cluster, shards, monkeypatch):
    clients = SourceClients(config(cluster))
    full = f"{cluster.filer_url.replace('http://', 'seaweedfs://')}{shards.root}/part-[0-2]*"
    assert clients.expand(full) == [n.replace("http://", "seaweedfs://")
                                    for n in shards.remote["plain"][:3]]
    monkeypatch.setenv("SEAWEED_FILER", cluster.filer_url)
    bare = f"{shards.root}/zipped-*"
    assert list(glob_matches(clients.expand, bare.encode())[0]) == \
        [n[len(cluster.filer_url):] for n in shards.remote["gzip"]]
    with pytest.raises(sd.NotFoundError, match="no file matches"):
        clients.expand(f"{shards.root}/nothing-*")
    assert "SourceClients" in repr(clients)
    clients.close()


def test_clients_close_when_the_dataset_is_collected(cluster, shards):
    """TensorFlow keeps a pipeline's Python functions for the life of the process; the
    clients behind them (connections, caches) go with the dataset."""
    gc.collect()
    users = LOOP.users
    ds = ours(cluster, shards.remote["plain"][:2]).batch(4)
    assert len(values(ds)) > 0
    assert LOOP.users == users + 1
    del ds
    gc.collect()
    assert LOOP.users == users
    clients = SourceClients(config(cluster))
    client, path = clients.locate(shards.remote["plain"][0])
    clients.close()
    again, _ = clients.locate(shards.remote["plain"][0])
    assert again is not client and again.read(path) == Path(shards.local["plain"][0]).read_bytes()
    clients.close()
