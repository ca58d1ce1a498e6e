"""PrefetchSampler under torchdata's StatefulDataLoader, and in a 2-rank gloo job.

- A StatefulDataLoader checkpointed mid-epoch and restored into a fresh dataset, sampler and
  loader yields exactly the rest of the epoch, in order, byte-exact; the epoch after it is the
  one an uninterrupted run would have had; the restored process prefetches what it reads.
- Two processes joined by a gloo process group on loopback, each with a DistributedSampler
  wrapped in a PrefetchSampler, read every sample exactly once per epoch between them.
"""

from __future__ import annotations

import hashlib
import io
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
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

import seaweed_data as sd
from seaweed_data.torch import PrefetchSampler, SeaweedImageFolder
from seaweed_data.torch.announce import worker_share

StatefulDataLoader = pytest.importorskip("torchdata.stateful_dataloader").StatefulDataLoader

CLASSES = ("ant", "bee", "cow")
PER_CLASS = 16  # 48 samples: 12 batches of 4, and an even count (DistributedSampler pads none)
BATCH = 4
SEED = 3


@pytest.fixture(scope="module")
def folder(cluster: Any) -> tuple[str, dict[str, bytes]]:
    """An image folder of small payloads, each starting with its own path."""
    root = f"/t/stateful-{uuid.uuid4().hex[:8]}"
    rng = random.Random(4)
    payloads = {}
    with cluster.client() as client:
        for cls in CLASSES:
            for i in range(PER_CLASS):
                path = f"{root}/{cls}/{i:02d}.jpg"
                payloads[path] = path.encode() + b"\0" + rng.randbytes(rng.randrange(50, 2000))
                client.write(path, payloads[path])
    return cluster.filer_url + root, payloads


def raw(data: bytes) -> bytes:
    return data


def collate_raw(batch: list[tuple[bytes, int]]) -> list[bytes]:
    return [data for data, _ in batch]


def flat(batches: Any) -> list[bytes]:
    return [data for batch in batches for data in batch]


def path_of(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode()


def stateful_loader(cluster: Any, url: str, workers: int) -> tuple[SeaweedImageFolder, Any]:
    config = sd.Config(master=cluster.master_url)
    ds = SeaweedImageFolder(url, loader=raw, config=config)
    base = RandomSampler(ds, generator=torch.Generator().manual_seed(SEED))
    loader = StatefulDataLoader(ds, batch_size=BATCH, sampler=PrefetchSampler(base, ds),
                                num_workers=workers, collate_fn=collate_raw)
    return ds, loader


def reference_epochs(ds: SeaweedImageFolder, payloads: dict[str, bytes],
                     epochs: int) -> list[list[bytes]]:
    """What an uninterrupted run yields, epoch by epoch: the same seeded RandomSampler."""
    sampler = RandomSampler(range(len(ds)), generator=torch.Generator().manual_seed(SEED))
    return [[payloads[ds.samples[i][0]] for i in sampler] for _ in range(epochs)]


def checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """The state as a training script saves and loads it (weights_only, the safe default)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


# After 5 batches, StatefulDataLoader hands the next batch to worker 1 (it continues the round
# robin), where PrefetchSampler's announcement alone would predict worker 0: the worker's first
# batch tells it where its share starts.
@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")
@pytest.mark.parametrize(("workers", "taken"), [
    (0, 5),
    (2, 4),
    (2, 5),
])
def test_stateful_dataloader_resumes_with_exactly_the_rest_of_the_epoch(cluster, folder,
                                                                        workers, taken):
    url, payloads = folder
    ds, loader = stateful_loader(cluster, url, workers)
    expected = reference_epochs(ds, payloads, 2)
    batches = iter(loader)
    first = flat(next(batches) for _ in range(taken))
    state = checkpoint(loader.state_dict())
    del batches, loader
    ds.close()

    if workers == 0:  # a state asked for between restoring and iterating still resumes
        ds, loader = stateful_loader(cluster, url, workers)
        loader.load_state_dict(state)
        state = checkpoint(loader.state_dict())
        ds.close()
    ds, loader = stateful_loader(cluster, url, workers)
    loader.load_state_dict(state)
    rest = flat(loader)
    stats = ds.stats()
    assert first == expected[0][:taken * BATCH]
    assert rest == expected[0][taken * BATCH:]  # the rest, in order, byte-exact, none skipped twice
    assert Counter(first + rest) == Counter(payloads.values())
    assert flat(loader) == expected[1]  # the next epoch is the uninterrupted run's next epoch
    ds.close()
    # The restored processes prefetched what they read (a few reads may race their prefetch;
    # hints that miss the round robin waste all and use none).
    assert stats["prefetch_used"] >= len(rest) - 2 * BATCH, stats
    assert stats["prefetch_wasted"] <= 2 * BATCH, stats


def test_worker_share_follows_the_batch_a_worker_is_handed_first():
    order = list(range(10))
    assert worker_share(order, False, 2, 0, 2) == [[0, 1], [4, 5], [8, 9]]
    # After a StatefulDataLoader resume the round robin may start at another worker.
    assert worker_share(order, False, 2, 0, 2, first=[2, 3]) == [[2, 3], [6, 7]]
    assert worker_share(order, False, 2, 1, 2, first=[0, 1]) == [[0, 1], [4, 5], [8, 9]]
    # A first batch the order does not start with: the plain round robin.
    assert worker_share(order, False, 2, 1, 2, first=[9, 9]) == [[2, 3], [6, 7]]


# -- two gloo ranks ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gloo_rank(rank: int, port: int, url: str, master: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        ds = SeaweedImageFolder(url, loader=raw, config=sd.Config(master=master))
        shard = DistributedSampler(ds, num_replicas=dist.get_world_size(),
                                   rank=dist.get_rank(), shuffle=True, seed=11)
        sampler = PrefetchSampler(shard, ds)
        loader = DataLoader(ds, batch_size=BATCH, sampler=sampler, num_workers=1 + rank,
                            collate_fn=collate_raw)
        epochs = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            epochs.append([(path_of(d), hashlib.sha256(d).hexdigest()) for d in flat(loader)])
        with open(out, "wb") as f:
            pickle.dump({"epochs": epochs, "stats": ds.stats()}, f)
        ds.close()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _gloo_entry(rank: int, port: int, url: str, master: str, outs: list[str]) -> None:
    gloo_rank(rank, port, url, master, outs[rank])


def test_two_gloo_ranks_read_every_sample_once_per_epoch(cluster, folder, tmp_path):
    url, payloads = folder
    outs = [str(tmp_path / f"rank{r}.pkl") for r in range(2)]
    tmp.spawn(_gloo_entry, args=(free_port(), url, cluster.master_url, outs), nprocs=2,
              join=True)
    results = []
    for out in outs:
        with open(out, "rb") as f:
            results.append(pickle.load(f))
    expected = Counter((path, hashlib.sha256(data).hexdigest()) for path, data in payloads.items())
    for epoch in range(2):
        ranks = [Counter(r["epochs"][epoch]) for r in results]
        assert ranks[0].total() == ranks[1].total() == len(payloads) // 2
        assert ranks[0] + ranks[1] == expected, epoch  # every sample once, byte-exact
    paths = sorted(payloads)  # the folder's sample order
    for rank, r in enumerate(results):
        for epoch in range(2):  # each rank read its DistributedSampler's order, in order
            shard = DistributedSampler(paths, num_replicas=2, rank=rank, shuffle=True, seed=11)
            shard.set_epoch(epoch)
            assert [path for path, _ in r["epochs"][epoch]] == [paths[i] for i in shard]
        assert r["epochs"][0] != r["epochs"][1]  # set_epoch reshuffled
        assert r["stats"]["prefetch_used"] > 0, r["stats"]
