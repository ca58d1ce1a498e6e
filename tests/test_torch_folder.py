"""SeaweedImageFolder and PrefetchSampler in real DataLoaders against a real SeaweedFS."""

import gc
import io
import os
import pickle
from collections import Counter
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)

import seaweed_data as sd
from seaweed_data.torch import PrefetchSampler, SeaweedImageFolder
from seaweed_data.torch.announce import Channel
from seaweed_data.torch.folder import IMG_EXTENSIONS

LAYOUT = {
    "cat": ["a.jpg", "b.PNG", "c.jpeg", "notes.txt", "sub/d.jpg", "sub/deeper/e.webp"],
    "dog": [f"{i:03d}.jpg" for i in range(40)],
    "emu": ["x.bmp", "y.JPG", ".hidden.jpg"],
}


def image_bytes(seed: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (seed % 256, (seed * 7) % 256, 3)).save(buffer, format=fmt)
    return buffer.getvalue()


def reference_samples(local_root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """torchvision.datasets.folder.make_dataset's order, on the local copy."""
    classes = sorted(e.name for e in os.scandir(local_root) if e.is_dir())
    samples = []
    for index, name in enumerate(classes):
        for root, _, files in sorted(os.walk(os.path.join(local_root, name))):
            for fname in sorted(files):
                path = os.path.join(root, fname)
                if path.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.relpath(path, local_root), index))
    return classes, samples


@pytest.fixture(scope="module")
def folder(cluster, tmp_path_factory):
    local = tmp_path_factory.mktemp("folder")
    payloads = {}
    with cluster.client() as client:
        for n, (cls, files) in enumerate(sorted(LAYOUT.items())):
            for m, name in enumerate(files):
                ext = name.rsplit(".", 1)[-1].lower()
                fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP",
                       "webp": "WEBP"}.get(ext)
                data = image_bytes(n * 100 + m, fmt) if fmt else b"not an image"
                client.write(f"/folder/{cls}/{name}", data)
                (local / cls / name).parent.mkdir(parents=True, exist_ok=True)
                (local / cls / name).write_bytes(data)
                payloads[f"/folder/{cls}/{name}"] = data
    return str(local), payloads


def raw(data: bytes) -> bytes:
    return data


def test_same_classes_samples_and_order_as_torchvision(cluster, folder):
    local, _ = folder
    ds = SeaweedImageFolder(f"{cluster.filer_url}/folder")
    classes, samples = reference_samples(local)
    assert ds.classes == classes and ds.class_to_idx == {c: i for i, c in enumerate(classes)}
    assert [(p.removeprefix("/folder/"), t) for p, t in ds.samples] == samples
    assert ds.targets == [t for _, t in samples] and ds.imgs == ds.samples
    assert len(ds) == len(samples)
    image, target = ds[0]
    assert image.mode == "RGB" and image.size == (8, 6) and target == 0
    ds.close()


def test_transforms_loader_and_is_valid_file(cluster, folder):
    ds = SeaweedImageFolder(f"{cluster.filer_url}/folder", loader=raw,
                            transform=len, target_transform=lambda t: -t,
                            is_valid_file=lambda p: p.endswith(".txt"), allow_empty=True)
    assert [p for p, _ in ds.samples] == ["/folder/cat/notes.txt"]
    assert ds[0] == (len(b"not an image"), 0)
    ds.close()


def test_empty_and_missing_folders_raise(cluster, folder):
    with pytest.raises(FileNotFoundError, match="emu"):
        SeaweedImageFolder(f"{cluster.filer_url}/folder", is_valid_file=lambda p: "/emu/" not in p)
    with pytest.raises(FileNotFoundError):
        SeaweedImageFolder(f"{cluster.filer_url}/no-such-folder")
    with pytest.raises(FileNotFoundError, match="class folder"):
        SeaweedImageFolder(f"{cluster.filer_url}/folder/dog")


def test_bad_image_names_the_file(cluster, folder):
    ds = SeaweedImageFolder(f"{cluster.filer_url}/folder", is_valid_file=lambda p: True)
    index = [p for p, _ in ds.samples].index("/folder/cat/notes.txt")
    with pytest.raises(Exception, match=r"notes\.txt"):
        ds[index]
    ds.close()


def epoch_samples(loader):
    seen = []
    for batch in loader:
        datas, targets = batch
        seen += list(zip(datas, targets.tolist(), strict=True))
    return seen


def collate_raw(batch):
    return [d for d, _ in batch], torch.tensor([t for _, t in batch])


@pytest.mark.parametrize(("workers", "context", "persistent", "form"), [
    (0, None, False, "sampler"),
    (2, "fork", False, "sampler"),
    (2, "fork", True, "batch_sampler"),
    (2, "spawn", False, "sampler"),
])
def test_every_sample_once_per_epoch_byte_exact(cluster, folder, tmp_path, workers, context,
                                               persistent, form):
    _, payloads = folder
    config = sd.Config(master=cluster.master_url, disk_cache_dir=str(tmp_path / "cache"))
    ds = SeaweedImageFolder(f"{cluster.filer_url}/folder", loader=raw, config=config)
    generator = torch.Generator().manual_seed(3)
    base = RandomSampler(ds, generator=generator)
    kwargs = dict(num_workers=workers, collate_fn=collate_raw, persistent_workers=persistent)
    if context:
        kwargs["multiprocessing_context"] = context
    if form == "sampler":
        sampler = PrefetchSampler(base, ds)
        loader = DataLoader(ds, batch_size=8, sampler=sampler, **kwargs)
    else:
        sampler = PrefetchSampler(BatchSampler(base, 8, drop_last=False), ds)
        loader = DataLoader(ds, batch_sampler=sampler, **kwargs)
    expected = Counter((payloads[p], t) for p, t in ds.samples)
    for _epoch in range(2):
        assert Counter(epoch_samples(loader)) == expected
    del loader  # persistent workers report their last counters as they exit
    stats = ds.stats()
    assert stats["prefetch_issued"] > 0
    assert stats["prefetch_used"] / stats["prefetch_issued"] >= 0.99, stats
    assert stats["bytes_fetched"] <= 1.05 * sum(len(payloads[p]) for p, _ in ds.samples)
    ds.close()


def test_distributed_sampler_set_epoch_and_next_epoch_hints(cluster, folder):
    ds = SeaweedImageFolder(f"{cluster.filer_url}/folder", loader=raw)
    shards = [DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=5) for r in (0, 1)]
    wrapped = [PrefetchSampler(s, ds) for s in shards]
    for epoch in range(2):
        seen = []
        for w in wrapped:
            w.set_epoch(epoch)
            assert w.sampler.epoch == epoch
            seen += list(w)
        assert sorted(seen) == list(range(len(ds)))
    following = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=5)
    following.set_epoch(2)
    assert ds._pending.next_order == list(following)  # the next epoch, computed ahead
    ds[0]  # the first read in this process applies the announced hints
    assert ds.client._async().items.prefetcher.hints
    ds.close()


def test_resume_yields_exactly_the_remaining_indices(cluster, folder):
    ds = SeaweedImageFolder(f"{cluster.filer_url}/folder", loader=raw)
    sampler = PrefetchSampler(RandomSampler(ds), ds)  # unseeded: the order lives in the state
    it = iter(sampler)
    first = [next(it) for _ in range(10)]
    state = pickle.loads(pickle.dumps(sampler.state_dict()))
    rest = list(it)
    resumed = PrefetchSampler(RandomSampler(ds), ds)
    resumed.load_state_dict(state)
    assert list(resumed) == rest
    assert sorted(first + rest) == list(range(len(ds)))
    assert len(list(resumed)) == len(ds)  # the epoch after runs whole
    ds.close()


class RecordingFolder(SeaweedImageFolder):
    def __getitems__(self, indices):
        info = torch.utils.data.get_worker_info()
        return [(info.id, i) for i in indices]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_dataloader_hands_batch_k_to_worker_k_mod_n(cluster, folder):
    """PrefetchSampler relies on this; the day DataLoader changes it, this fails."""
    ds = RecordingFolder(f"{cluster.filer_url}/folder", loader=raw)
    loader = DataLoader(ds, batch_size=4, sampler=SequentialSampler(ds), num_workers=3,
                        collate_fn=lambda b: b)
    for k, batch in enumerate(loader):
        assert {worker for worker, _ in batch} == {k % 3}
    ds.close()


def test_out_of_order_dataloader_still_delivers_every_sample_once(cluster, folder):
    """in_order=False may hand batches to other workers than predicted: hints may be
    switched off, but no sample is lost or repeated."""
    _, payloads = folder
    ds = SeaweedImageFolder(f"{cluster.filer_url}/folder", loader=raw)
    sampler = PrefetchSampler(SequentialSampler(ds), ds)
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2,
                        collate_fn=collate_raw, in_order=False)
    expected = Counter((payloads[p], t) for p, t in ds.samples)
    assert Counter(epoch_samples(loader)) == expected
    ds.close()


class FreezeReportingFolder(SeaweedImageFolder):
    def __getitems__(self, indices):
        super().__getitems__(indices)
        return [gc.get_freeze_count()]


def test_workers_freeze_their_inherited_heap_and_the_main_process_does_not(cluster, folder):
    before = gc.get_freeze_count()
    ds = FreezeReportingFolder(f"{cluster.filer_url}/folder", loader=raw)
    loader = DataLoader(ds, batch_size=4, num_workers=1, collate_fn=lambda b: b,
                        multiprocessing_context="fork")
    counts = [count for batch in loader for count in batch]
    assert counts and min(counts) > 0  # the worker froze what it inherited, at its first read
    assert max(counts) == counts[0]  # once per process: later reads froze nothing more
    ds.__getitems__([0])  # reading in the main process leaves its collector alone
    assert gc.get_freeze_count() == before
    ds.close()


def test_freezing_happens_once_per_process():
    from seaweed_data.torch import worker_heap

    saved = worker_heap._frozen_in
    try:
        worker_heap._frozen_in = os.getpid()
        before = gc.get_freeze_count()
        keep = [[] for _ in range(10)]  # new tracked objects, not frozen again
        worker_heap.freeze_inherited_heap()
        assert gc.get_freeze_count() == before and keep
    finally:
        worker_heap._frozen_in = saved


def test_the_listing_hashes_every_version_once_for_all_workers(cluster, folder):
    ds = SeaweedImageFolder(f"{cluster.filer_url}/folder", loader=raw)
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned worker gets
    for entries in (ds.entries, clone.entries):
        assert entries and all("_version" in e.__dict__ for e in entries)
    assert [e.version for e in clone.entries] == [e.version for e in ds.entries]
    ds.close()


def test_the_main_process_maps_paths_at_its_first_announcement(cluster, folder):
    """Workers forked for later epochs inherit the map; a pickled copy makes its own."""
    ds = SeaweedImageFolder(f"{cluster.filer_url}/folder", loader=raw)
    assert ds._by_path is None
    assert len(list(PrefetchSampler(RandomSampler(ds), ds))) == len(ds)  # announces
    assert ds._by_path == {e.path: e for e in ds.entries}
    assert pickle.loads(pickle.dumps(ds))._by_path is None
    ds.close()


class CountingChannel(Channel):
    polls = 0

    def poll(self):
        CountingChannel.polls += 1
        return super().poll()


class PollReportingFolder(SeaweedImageFolder):
    def __getitems__(self, indices):
        super().__getitems__(indices)
        return [CountingChannel.polls]


def test_workers_look_for_announcements_only_when_a_batch_was_not_predicted(cluster, folder):
    ds = PollReportingFolder(f"{cluster.filer_url}/folder", loader=raw)
    ds._channel = CountingChannel()
    sampler = PrefetchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(1)), ds)
    loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=1,
                        collate_fn=lambda b: b, persistent_workers=True,
                        multiprocessing_context="fork")
    epochs = [[count for batch in loader for count in batch] for _ in range(2)]
    batches = -(-len(ds) // 2)
    assert batches >= 3 and [len(e) for e in epochs] == [batches, batches]
    # One look per epoch, at its first batch (nothing predicted for it): the batches of the
    # announced order need none.
    assert epochs[0] == [1] * batches and epochs[1] == [2] * batches
    ds.close()


class HintReportingFolder(SeaweedImageFolder):
    """Each batch comes out as the lengths of the hints this worker told so far."""

    told: ClassVar[list[int]] = []

    def _tell(self, mine, upcoming, cross):
        HintReportingFolder.told.append(len(mine))
        super()._tell(mine, upcoming, cross)

    def __getitems__(self, indices):
        super().__getitems__(indices)
        return [list(HintReportingFolder.told)]


@pytest.mark.parametrize("persistent", [False, True])
def test_workers_tell_hints_only_once_a_batch_missed(cluster, folder, tmp_path, persistent):
    """Epoch 1 (cold): each worker tells the rest of its share after its first batch.
    Epoch 2 (warm, on the disk tier): no batch misses, and no worker, fresh
    (persistent_workers=False) or persistent, tells anything."""
    config = sd.Config(disk_cache_dir=str(tmp_path / "cache"))
    ds = HintReportingFolder(f"{cluster.filer_url}/folder", loader=raw, config=config)
    sampler = PrefetchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(3)), ds)
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2, collate_fn=lambda b: b,
                        persistent_workers=persistent, multiprocessing_context="fork")
    batches = -(-len(ds) // 4)
    shares = [len(range(w, batches, 2)) for w in range(2)]  # batches per worker
    told = [[b[0] for b in loader] for _ in range(2)]
    first_told = sorted({tuple(t) for t in told[0] if t})
    assert first_told == sorted({(4 * (n - 1),) for n in shares})  # the rest of each share
    if persistent:  # what each worker told in epoch 1, nothing more
        assert sorted({tuple(t) for t in told[1]}) == first_told
    else:
        assert all(t == [] for t in told[1])
    ds.close()


def test_a_fresh_reader_takes_disk_hits_by_the_listings_keys(cluster, folder, tmp_path):
    """A process that expects no reads and holds nothing in memory (a fresh DataLoader
    worker of a warm epoch) reads the disk tier by the keys its listing process made,
    without the entries; the first file the disk lacks, and those after it, go the usual
    way."""
    config = sd.Config(disk_cache_dir=str(tmp_path / "cache"))
    first = SeaweedImageFolder(f"{cluster.filer_url}/folder", loader=raw, config=config)
    order = list(range(len(first)))
    cached = order[:-3]  # the last three are not on the disk tier
    first.__getitems__(cached)
    first.client.flush()
    first.close()
    _, payloads = folder
    ds = SeaweedImageFolder(f"{cluster.filer_url}/folder", loader=raw, config=config)
    read_alone = []
    read_entries = ds.client.read_entries
    ds.client.read_entries = lambda entries: read_alone.extend(e.path for e in entries) or \
        read_entries(entries)
    batch = ds.__getitems__(order)
    assert [data for data, _ in batch] == [payloads[path] for path, _ in ds.samples]
    assert read_alone == [path for path, _ in ds.samples[-3:]]
    assert ds.client.stats()["cache_hits_disk"] == len(cached)
    ds.close()


def test_paths_of_looks_a_listings_paths_up_when_read():
    from seaweed_data.torch.folder import PathsOf

    entries = [sd.Entry(path=f"/d/{i}.jpg", size=1, is_dir=False) for i in range(5)]
    paths = PathsOf(entries, [3, 0, 4])
    assert len(paths) == 3 and list(paths) == ["/d/3.jpg", "/d/0.jpg", "/d/4.jpg"]
    assert paths[1] == "/d/0.jpg" and paths[1:] == ["/d/0.jpg", "/d/4.jpg"]


class AnnouncedOrders:
    def __init__(self) -> None:
        self.orders: list[tuple[list[Any], list[Any] | None, bool]] = []

    def announce(self, order: list[Any], next_order: list[Any] | None, batched: bool) -> None:
        self.orders.append((order, next_order, batched))


def test_indices_of_any_integer_type_are_yielded_and_announced_as_ints():
    tensors = [torch.tensor(i) for i in (3, 1, 2)]
    numpy_ints = [np.int64(i) for i in (5, 4)]
    for sampler, expected, batched in (([7, 8], [7, 8], False),
                                       (tensors, [3, 1, 2], False),
                                       (numpy_ints, [5, 4], False),
                                       ([[torch.tensor(1), np.int64(2)], [3]], [[1, 2], [3]],
                                        True)):
        announced = AnnouncedOrders()
        yielded = list(PrefetchSampler(sampler, announced))
        assert yielded == expected and announced.orders == [(expected, None, batched)]
        flat = [i for b in yielded for i in b] if batched else yielded
        assert all(type(i) is int for i in flat)
    resumed = PrefetchSampler([0], AnnouncedOrders())
    resumed.load_state_dict({"epoch": 0, "order": tensors, "yielded": 1})
    assert list(resumed) == [1, 2]
