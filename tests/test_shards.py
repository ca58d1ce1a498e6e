"""ShardDataset: its plan (pure), and against a real SeaweedFS: every sample once over ranks
and workers, shuffling, resume, prefetch hints, streaming, errors."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
import os
import pickle
import random
import socket
import uuid
from collections import Counter
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp
from hypothesis import given, settings
from hypothesis import strategies as st
from shard_files import framed, pt_bytes
from torch.utils.data import DataLoader

import seaweed_data as sd
from seaweed_data.core.records import write_records
from seaweed_data.torch import ShardDataset, shard_process
from seaweed_data.torch.shard_formats import Rows, load_pt, shard_format
from seaweed_data.torch.shard_plan import Slot, epoch_order, equal_share, slot_share, water_fill
from seaweed_data.torch.shard_state import Progress, make_state, parse_state, starting_point

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

# -- the plan and the formats, without a cluster ---------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=40), st.integers(1, 4),
       st.integers(1, 3), st.integers(0, 3), st.booleans())
def test_plan_deals_each_shard_once_and_equal_shares_match(counts, world, workers, epoch,
                                                           shuffle):
    order = epoch_order(len(counts), shuffle, 7, epoch)
    assert sorted(order) == list(range(len(counts)))
    slots = [Slot(r, world, w, workers) for r in range(world) for w in range(workers)]
    dealt = [i for slot in slots for i in slot_share(order, slot)]
    assert sorted(dealt) == list(range(len(counts)))
    rank_totals = [sum(counts[i] for s in slots if s.rank == r for i in slot_share(order, s))
                   for r in range(world)]
    for rank in range(world):
        shares = [equal_share(order, counts, s) for s in slots if s.rank == rank]
        assert sum(quota for quota, _ in shares) == min(rank_totals)
        for (quota, needed), slot in zip(shares, [s for s in slots if s.rank == rank],
                                         strict=True):
            assert needed == slot_share(order, slot)[:len(needed)]
            assert sum(counts[i] for i in needed) >= quota


@given(st.lists(st.integers(0, 50), max_size=8), st.data())
def test_water_fill_is_even_and_exact(totals, data):
    target = data.draw(st.integers(0, sum(totals)))
    quotas = water_fill(totals, target)
    assert sum(quotas) == target and all(0 <= q <= t for q, t in zip(quotas, totals, strict=True))
    short = [q for q, t in zip(quotas, totals, strict=True) if q < t]  # gave samples up
    assert not short or max(quotas) - min(short) <= 1
    with pytest.raises(ValueError):
        water_fill(totals, sum(totals) + 1)


def test_shard_formats_by_name():
    assert shard_format("/a/x.PT").kind == shard_format("/a/x.pth").kind == "pt"
    assert shard_format("/a/x.tfrecord").compression == ""
    assert shard_format("/a/x.tfrecords.gz").compression == "GZIP"
    assert shard_format("/a/x.tfrec.zz").compression == "ZLIB"
    assert shard_format("/a/x.tfrecord", "gzip").compression == "GZIP"
    with pytest.raises(ValueError, match=r"unsupported shard '/a/x\.gz'"):
        shard_format("/a/x.gz")


@dataclasses.dataclass
class Unlisted:
    """Not among the types ``weights_only`` unpickles."""

    value: int


def test_pt_shapes_and_their_errors():
    rows = load_pt(pt_bytes({"id": torch.arange(3), "y": [5, 6, 7]}), "/s.pt")
    assert isinstance(rows, Rows) and len(rows) == 3 and rows[-1]["y"] == 7
    assert [int(r["id"]) for r in rows[1:]] == [1, 2]
    with pytest.raises(IndexError):
        rows[3]
    bad = [{"a": torch.zeros(2), "b": torch.zeros(3)}, {"a": torch.tensor(1.0)}, {},
           torch.zeros(4)]
    for obj in bad:
        with pytest.raises(sd.CorruptDataError, match=r"/s\.pt") as caught:
            load_pt(pt_bytes(obj), "/s.pt")
        assert caught.value.path == "/s.pt"
    with pytest.raises(pickle.UnpicklingError, match=r"/s\.pt"):  # a choice, not corruption
        load_pt(pt_bytes([Unlisted(1)]), "/s.pt")
    assert load_pt(pt_bytes([Unlisted(1)]), "/s.pt", weights_only=False) == [Unlisted(1)]


def test_state_round_trip_and_its_checks():
    options = {"seed": 1, "shuffle": True, "equal_per_rank": False}
    live = {"0/1/0/2": Progress(3, 4, 5, 60), "0/1/0/3": Progress(2, 1, 1, 1)}  # one stale
    pending = parse_state(make_state(options, 3, 10, {}, None) | {"progress": {
        "0/1/1/2": [1, 2, 3]}}, options)
    state = make_state(options, 3, 10, live, pending)
    assert state["progress"] == {"0/1/0/2": [4, 5, 60], "0/1/1/2": [1, 2, 3]}
    resume = parse_state(json.loads(json.dumps(state)), options)
    assert starting_point(resume, Slot(0, 1, 1, 2), 3, 10) == Progress(3, 1, 2, 3)
    assert starting_point(resume, Slot(0, 1, 0, 2), 4, 10) == Progress(4)  # another epoch
    with pytest.raises(ValueError, match="over 10 shards, there are 11"):
        starting_point(resume, Slot(0, 1, 0, 2), 3, 11)
    for broken in ({**state, "version": 0}, {**state, "epoch": -1}, {**state, "seed": 2},
                   {**state, "progress": {"0/1": [0, 0, 0]}}):
        with pytest.raises(ValueError):
            parse_state(broken, options)


# -- shards on the cluster -------------------------------------------------------------------


def tfrecord_bytes(records: list[bytes], compression: str | None = None) -> bytes:
    out = io.BytesIO()
    write_records(out, records, compression=compression)
    return out.getvalue()


def key(sample: Any) -> Any:
    """A hashable, exact form of a sample of any kind."""
    if isinstance(sample, dict):
        return ("row", int(sample["id"]), tuple(sample["x"].tolist()))
    return sample


def make_shards(client: sd.Client, root: str) -> dict[str, tuple[str, Counter[Any]]]:
    """Shards of every kind with 4..9 samples each; per kind: (glob, expected samples)."""
    rng = random.Random(1)
    kinds: dict[str, tuple[str, Counter[Any]]] = {}
    next_id = 0

    def ids(n: int) -> list[int]:
        nonlocal next_id
        next_id += n
        return list(range(next_id - n, next_id))

    def add(kind: str, name: str, data: bytes, samples: list[Any]) -> None:
        client.write(f"{root}/{name}", data)
        _, expected = kinds.setdefault(kind, (f"{root}/{kind}-*", Counter()))
        expected.update(key(s) for s in samples)

    for i in range(5):
        batch = ids(4 + i)
        add("list", f"list-{i}.pt", pt_bytes(batch), batch)
        words = [f"w{n}" for n in ids(9 - i)]
        add("tuple", f"tuple-{i}.pth", pt_bytes(tuple(words)), words)
        row_ids = ids(5 + i % 3)
        x = torch.rand(len(row_ids), 3)
        add("dict", f"dict-{i}.pt", pt_bytes({"id": torch.tensor(row_ids), "x": x}),
            [{"id": n, "x": x[j]} for j, n in enumerate(row_ids)])
        records = [f"r{n}-".encode() + rng.randbytes(rng.randrange(50)) for n in ids(4 + i)]
        add("tfrecord", f"tfrecord-{i}.tfrecord", tfrecord_bytes(records), records)
        zipped = [f"g{n}".encode() * 3 for n in ids(9 - i)]
        add("gzip", f"gzip-{i}.tfrecord.gz", tfrecord_bytes(zipped, "GZIP"), zipped)
    everything = Counter[Any]()
    for _, expected in kinds.values():
        everything.update(expected)
    kinds["all"] = (f"{root}/*", everything)
    return kinds


@pytest.fixture(scope="module")
def shard_sets(cluster):
    root = f"/t/shards-{uuid.uuid4().hex[:8]}"
    with cluster.client() as client:
        return make_shards(client, root)


def dataset(cluster, pattern: str, **options: Any) -> ShardDataset:
    return ShardDataset(cluster.filer_url + pattern, config=sd.Config(master=cluster.master_url),
                        **options)


def loader(ds: ShardDataset, workers: int = 0, **options: Any) -> DataLoader:
    return DataLoader(ds, batch_size=None, num_workers=workers, **options)


def epoch_keys(data: Any) -> list[Any]:
    return [key(sample) for sample in data]


def first_difference(a: list[Any], b: list[Any]) -> str | None:
    """None if equal, else a short description (pytest's full diff of long lists is slow)."""
    if a == b:
        return None
    pairs = zip(a, b, strict=False)
    at = next((i for i, (x, y) in enumerate(pairs) if x != y), min(len(a), len(b)))
    return f"lengths {len(a)} and {len(b)}, first difference at {at}"


@pytest.mark.parametrize("kind", ["list", "tuple", "dict", "tfrecord", "gzip"])
@pytest.mark.parametrize("workers", [0, 3])
def test_every_sample_exactly_once(cluster, shard_sets, kind, workers):
    pattern, expected = shard_sets[kind]
    ds = dataset(cluster, pattern, shuffle=True, seed=3)
    for epoch in range(2):
        ds.set_epoch(epoch)
        assert Counter(epoch_keys(loader(ds, workers))) == expected


def test_every_sample_once_with_a_persistent_worker_and_spawned_workers(cluster, shard_sets):
    pattern, expected = shard_sets["all"]
    ds = dataset(cluster, pattern, shuffle=True)
    persistent = loader(ds, 1, persistent_workers=True)
    spawned = loader(ds, 2, multiprocessing_context="spawn")
    for epoch in range(2):
        ds.set_epoch(epoch)
        assert Counter(epoch_keys(persistent)) == expected
    assert Counter(epoch_keys(spawned)) == expected


def test_shuffle_is_a_function_of_seed_and_epoch(cluster, shard_sets):
    pattern, expected = shard_sets["all"]
    first = epoch_keys(dataset(cluster, pattern, shuffle=True, seed=5))
    again = epoch_keys(dataset(cluster, pattern, shuffle=True, seed=5))
    other_seed = epoch_keys(dataset(cluster, pattern, shuffle=True, seed=6))
    ds = dataset(cluster, pattern, shuffle=True, seed=5)
    ds.set_epoch(1)
    next_epoch = epoch_keys(ds)
    plain = epoch_keys(dataset(cluster, pattern))
    assert first_difference(first, again) is None
    assert len({tuple(first), tuple(other_seed), tuple(next_epoch), tuple(plain)}) == 4
    assert Counter(first) == Counter(next_epoch) == Counter(plain) == expected
    # within a shard too: one shard's samples come in another order each epoch
    one = dataset(cluster, shard_sets["list"][0].replace("list-*", "list-4.pt"), shuffle=True)
    orders = []
    for epoch in range(2):
        one.set_epoch(epoch)
        orders.append(epoch_keys(one))
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]
    # and the shard order: with a buffer of one record, records keep their file order
    shard_orders = []
    for epoch in range(2):
        records = dataset(cluster, shard_sets["tfrecord"][0], shuffle=True, shuffle_buffer=1)
        records.set_epoch(epoch)
        shard_orders.append([int(r[1:r.index(b"-")]) for r in records])
    assert shard_orders[0] != shard_orders[1]
    assert sorted(shard_orders[0]) == sorted(shard_orders[1])
    for order in shard_orders:  # at most 5 runs of consecutive ids: whole shards, in order
        assert sum(1 for a, b in itertools.pairwise(order) if b != a + 1) <= 4
    for kind in ("gzip", "dict"):
        single = dataset(cluster, shard_sets[kind][0].replace("-*", "-0*"), shuffle=True)
        unshuffled = dataset(cluster, shard_sets[kind][0].replace("-*", "-0*"))
        assert epoch_keys(single) != epoch_keys(unshuffled), kind


def test_set_epoch_reaches_persistent_workers(cluster, shard_sets):
    pattern, expected = shard_sets["all"]
    ds = dataset(cluster, pattern, shuffle=True, seed=2)
    persistent = loader(ds, 2, persistent_workers=True)
    seen = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        seen.append(epoch_keys(persistent))
        # live workers report when they finish an epoch, not just every second
        assert ds.stats()["samples_yielded"] == (epoch + 1) * expected.total()
    for epoch in range(2):
        fresh = dataset(cluster, pattern, shuffle=True, seed=2)
        fresh.set_epoch(epoch)
        assert first_difference(epoch_keys(loader(fresh, 2)), seen[epoch]) is None
    assert seen[0] != seen[1]


def test_resume_yields_exactly_the_remaining_samples(cluster, shard_sets):
    pattern, _ = shard_sets["all"]
    ds = dataset(cluster, pattern, shuffle=True, seed=9, shuffle_buffer=3)
    ds.set_epoch(4)
    full = epoch_keys(ds)
    for stop_after in (1, 7, 40, len(full) // 2, len(full) - 1, len(full)):
        ds = dataset(cluster, pattern, shuffle=True, seed=9, shuffle_buffer=3)
        ds.set_epoch(4)
        batches = DataLoader(ds, batch_size=None, num_workers=0)
        taken = []
        for sample in batches:
            taken.append(key(sample))
            if len(taken) == stop_after:
                break
        state = json.loads(json.dumps(ds.state_dict()))
        resumed = dataset(cluster, pattern, shuffle=True, seed=9, shuffle_buffer=3)
        resumed.load_state_dict(state)
        assert resumed.epoch == 4
        assert first_difference(taken + epoch_keys(resumed), full) is None, stop_after
        # a resume applies once; then whole epochs again
        assert first_difference(epoch_keys(resumed), full) is None


def test_resume_counts_whole_batches(cluster, shard_sets):
    pattern, _ = shard_sets["list"]
    ds = dataset(cluster, pattern, shuffle=True)
    full = [int(n) for batch in DataLoader(ds, batch_size=4) for n in batch]
    batches = iter(DataLoader(ds, batch_size=4))
    taken = [int(n) for _ in range(3) for n in next(batches)]
    state = ds.state_dict()
    assert sum(p[2] for p in state["progress"].values()) == 12
    resumed = dataset(cluster, pattern, shuffle=True)
    resumed.load_state_dict(state)
    rest = [int(n) for b in DataLoader(resumed, batch_size=4) for n in b]
    assert first_difference(taken + rest, full) is None
    stats = resumed.stats()  # only the shards still to read were announced and prefetched
    assert stats["prefetch_used"] == stats["prefetch_issued"] > 0
    assert stats["prefetch_wasted"] == 0


def test_a_state_from_another_layout_or_seed_is_refused(cluster, shard_sets, monkeypatch):
    pattern, _ = shard_sets["list"]
    ds = dataset(cluster, pattern)
    next(iter(ds))
    state = ds.state_dict()
    assert list(state["progress"]) == ["0/1/0/1"]
    with pytest.raises(ValueError, match="seed"):
        dataset(cluster, pattern, seed=1).load_state_dict(state)
    other = dataset(cluster, pattern)
    other.load_state_dict(state)
    fake_ranks(monkeypatch, 0, 2)
    with pytest.raises(ValueError, match="same world size and num_workers"):
        list(other)


def fake_ranks(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    monkeypatch.setattr(shard_process, "distributed_rank", lambda: (rank, world))


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_split_the_data_and_equal_per_rank_evens_them(cluster, shard_sets, monkeypatch,
                                                            workers):
    pattern, expected = shard_sets["all"]
    runs: dict[bool, list[Counter[Any]]] = {}
    for equal in (False, True):
        runs[equal] = []
        for rank in range(2):
            fake_ranks(monkeypatch, rank, 2)  # forked workers inherit the patch
            ds = dataset(cluster, pattern, shuffle=True, equal_per_rank=equal)
            runs[equal].append(Counter(epoch_keys(loader(ds, workers))))
    plain, equal = runs[False], runs[True]
    assert plain[0] + plain[1] == expected and not plain[0] & plain[1]
    assert plain[0].total() != plain[1].total()
    target = min(plain[0].total(), plain[1].total())
    assert equal[0].total() == equal[1].total() == target
    assert not equal[0] - plain[0] and not equal[1] - plain[1]  # the same shards, trimmed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gloo_rank(rank: int, port: int, filer: str, master: str, pattern: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        config = sd.Config(master=master)
        plain = ShardDataset(filer + pattern, shuffle=True, config=config)
        equal = ShardDataset(filer + pattern, shuffle=True, config=config, equal_per_rank=True)
        equal.count_samples()  # once, here; the spawned worker gets the counts
        result = {
            "plain": [key(s) for s in plain],
            "spawned": [key(s) for s in DataLoader(plain, batch_size=None, num_workers=1,
                                                   multiprocessing_context="spawn")],
            "equal": [key(s) for s in DataLoader(equal, batch_size=None, num_workers=1,
                                                 multiprocessing_context="fork")],
        }
        with open(out, "wb") as f:
            pickle.dump(result, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_cover_the_data_once(cluster, shard_sets, tmp_path):
    pattern, expected = shard_sets["all"]
    port = free_port()
    outs = [str(tmp_path / f"rank{r}.pkl") for r in range(2)]

    tmp.spawn(_gloo_entry, args=(port, cluster.filer_url, cluster.master_url, pattern, outs),
              nprocs=2, join=True)
    results = []
    for out in outs:
        with open(out, "rb") as f:
            results.append(pickle.load(f))
    for kind in ("plain", "spawned"):
        ranks = [Counter(r[kind]) for r in results]
        assert ranks[0] + ranks[1] == expected and not ranks[0] & ranks[1], kind
    assert results[0]["plain"] != results[1]["plain"]
    equal = [Counter(r["equal"]) for r in results]
    assert equal[0].total() == equal[1].total() and not equal[0] & equal[1]
    assert not (equal[0] + equal[1]) - expected


def _gloo_entry(rank: int, port: int, filer: str, master: str, pattern: str,
                outs: list[str]) -> None:
    gloo_rank(rank, port, filer, master, pattern, outs[rank])


# -- prefetch, streaming, stats --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pt", "tfrecord"])
def test_prefetch_hints_are_used_and_bytes_are_fetched_once(cluster, kind):
    root = f"/t/prefetch-{uuid.uuid4().hex[:8]}"
    size = 0
    with cluster.client() as client:
        for i in range(8):
            payload = [os.urandom(20_000) for _ in range(12)]
            data = pt_bytes(payload) if kind == "pt" else tfrecord_bytes(payload)
            client.write(f"{root}/s-{i}.{'pt' if kind == 'pt' else 'tfrecord'}", data)
            size += len(data)
    ds = dataset(cluster, f"{root}/s-*", shuffle=True)
    assert sum(1 for _ in loader(ds, 2)) == 96
    stats = ds.stats()
    assert stats["samples_yielded"] == 96 and stats["shards_read"] == 8
    assert stats["prefetch_issued"] >= (8 if kind == "pt" else 6)
    assert stats["prefetch_used"] / stats["prefetch_issued"] >= 0.99
    assert size <= stats["bytes_fetched"] <= 1.02 * size
    ds.close()


def test_tfrecord_records_flow_before_the_shard_has_arrived(cluster):
    path = f"/t/stream-{uuid.uuid4().hex[:8]}/big.tfrecord"
    records = [os.urandom(64 * 1024) for _ in range(96)]  # 6 MiB, 6 filer chunks
    data = tfrecord_bytes(records)
    with cluster.client() as client:
        client.write(path, data)
    ds = dataset(cluster, path)
    samples = iter(ds)
    assert next(samples) == records[0]
    assert 0 < ds.stats()["bytes_fetched"] < len(data) // 2
    assert [records[0], *samples] == records
    assert ds.stats()["bytes_fetched"] == len(data)


# -- errors ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_shards(cluster):
    root = f"/t/bad-{uuid.uuid4().hex[:8]}"
    records = [f"rec{i}".encode() * 10 for i in range(6)]
    blob, offsets = framed(records)
    corrupt = bytearray(blob)
    corrupt[offsets[3] + 14] ^= 0x01  # record 3's data
    good_pt = pt_bytes(list(range(10)))
    with cluster.client() as client:
        client.write(f"{root}/a-corrupt.tfrecord", bytes(corrupt))
        client.write(f"{root}/b-truncated.tfrecord", blob[: offsets[4] + 5])
        client.write(f"{root}/c-truncated.pt", good_pt[: len(good_pt) // 2])
        client.write(f"{root}/d-good.pt", good_pt)
    return root, records, offsets


def test_a_corrupt_record_names_the_shard_and_offset(cluster, bad_shards):
    root, records, offsets = bad_shards
    ds = dataset(cluster, f"{root}/a-corrupt.tfrecord")
    got = []
    with pytest.raises(sd.CorruptDataError) as caught:
        got.extend(ds)
    assert caught.value.path == f"{root}/a-corrupt.tfrecord"
    assert caught.value.offset == offsets[3]
    assert f"{root}/a-corrupt.tfrecord" in str(caught.value)
    assert f"byte offset {offsets[3]}" in str(caught.value)
    assert got == records[:3]
    with pytest.raises(sd.CorruptDataError, match=r"b-truncated\.tfrecord.*truncated"):
        list(dataset(cluster, f"{root}/b-truncated.tfrecord"))


def test_a_truncated_pt_shard_names_the_path_also_from_a_worker(cluster, bad_shards,
                                                                monkeypatch):
    root, _, _ = bad_shards
    with pytest.raises(sd.CorruptDataError, match=r"c-truncated\.pt") as caught:
        list(dataset(cluster, f"{root}/c-truncated.pt"))
    assert caught.value.path == f"{root}/c-truncated.pt"
    # After a worker error, DataLoader waits this long for its workers to exit (default 5 s).
    for module in (torch.utils.data._utils, torch.utils.data._utils.worker):
        monkeypatch.setattr(module, "MP_STATUS_CHECK_INTERVAL", 0.2)
    batches = iter(loader(dataset(cluster, f"{root}/c-truncated.pt"), 1))
    with pytest.raises(sd.CorruptDataError, match=r"c-truncated\.pt"):
        next(batches)
    batches._shutdown_workers()  # now, while the short interval holds


def test_skip_policy_counts_and_logs_every_skip(cluster, bad_shards, caplog):
    root, records, _ = bad_shards
    ds = dataset(cluster, f"{root}/*", on_error="skip")
    with caplog.at_level(logging.WARNING, logger="seaweed_data.torch.shards"):
        got = list(ds)
    expected = [*records[:3], *records[4:], *records[:4], *range(10)]
    assert got == expected
    stats = ds.stats()
    assert stats["samples_skipped"] == 1 and stats["shards_skipped"] == 2
    assert len([r for r in caplog.records if "skipping" in r.message]) == 3
    assert ds.count_samples() == [5, 4, 0, 10]


def test_constructor_does_no_io_and_validates(cluster):
    ds = ShardDataset("http://127.0.0.1:9/nowhere/*.tfrecord", shuffle=True)  # nothing there
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.shuffle and clone._local_state is None
    with pytest.raises(ValueError, match="unsupported shard"):
        ShardDataset("/data/x.csv")
    with pytest.raises(ValueError, match="on_error"):
        ShardDataset("/data/x.pt", on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(sd.InvalidLocationError):
        ShardDataset(["http://a:1/x.pt", "http://b:1/y.pt"])
    with pytest.raises(sd.NotFoundError, match="no file matches"):
        list(dataset(cluster, f"/t/none-{uuid.uuid4().hex[:6]}/*.pt"))
    ds.close()


def test_compression_option_a_given_client_and_no_prefetch(cluster):
    root = f"/t/options-{uuid.uuid4().hex[:8]}"
    records = [f"z{i}".encode() * 50 for i in range(30)]
    with cluster.client() as client:
        for i in range(3):  # GZIP content under plain names
            client.write(f"{root}/s{i}.tfrecord", tfrecord_bytes(records, "GZIP"))
        ds = ShardDataset(f"{root}/s*.tfrecord", compression="GZIP", client=client, prefetch=0)
        assert list(ds) == records * 3
        stats = ds.stats()
        assert stats["prefetch_issued"] == 0 and stats["shards_read"] == 3
        assert client.stats()["bytes_fetched"] == 0  # the dataset reads with its own client
        ds.close()
