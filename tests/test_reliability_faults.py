"""Faults in the middle of a DataLoader epoch, against real servers: nothing lost, nothing wrong.

Every test reads a whole epoch of a :class:`SeaweedImageFolder` (or a :class:`ShardDataset`)
through a real DataLoader while a server dies, freezes, restarts or has its connections cut by
:class:`proxy.FaultProxy`, and checks that every sample came exactly once with exactly the bytes
written. Where an epoch must not stall, each batch's wall time is bounded (a bound, not a
benchmark: the fault costs ``Config.volume_timeout`` per affected read, far below it).

``tests/test_faults.py`` covers the single-client cases (replica loss in a loop of reads, a
flaky filer link, a hung filer); this file takes them to the dataset level, with workers.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from proxy import FaultProxy
from shard_files import pt_bytes
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

import seaweed_data as sd
from seaweed_data.core import volumes
from seaweed_data.core.cluster import LocalCluster
from seaweed_data.torch import PrefetchSampler, SeaweedImageFolder, ShardDataset

BATCH = 8
BATCH_BOUND_S = 5.0  # no batch of an epoch with a fault may take longer than this


def raw(data: bytes) -> bytes:
    return data


def collate_raw(batch: list[tuple[bytes, int]]) -> list[bytes]:
    return [data for data, _ in batch]


def write_folder(client: sd.Client, root: str, classes: int, per_class: int,
                 sizes: tuple[int, int]) -> dict[str, bytes]:
    """An image-folder layout of random payloads (read back with ``loader=raw``)."""
    rng = random.Random(root)
    files = {f"{root}/c{c}/{i:03d}.jpg": rng.randbytes(rng.randrange(*sizes))
             for c in range(classes) for i in range(per_class)}
    for path, data in files.items():
        client.write(path, data)
    return files


def loader_for(ds: SeaweedImageFolder, workers: int = 2, seed: int = 0) -> DataLoader[Any]:
    sampler = BatchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(seed)),
                           BATCH, drop_last=False)
    return DataLoader(ds, batch_sampler=PrefetchSampler(sampler, ds), num_workers=workers,
                      collate_fn=collate_raw, timeout=60)


def timed_epoch(loader: DataLoader[Any],
                at_batch: dict[int, Callable[[], None]] | None = None
                ) -> tuple[list[bytes], list[float]]:
    """Every payload of one epoch and each batch's wall time; ``at_batch[k]()`` runs before
    batch ``k`` is asked for (its own time is not counted)."""
    payloads: list[bytes] = []
    times: list[float] = []
    batches = iter(loader)
    for k in range(len(loader)):
        if at_batch and k in at_batch:
            at_batch[k]()
        start = time.monotonic()
        payloads += next(batches)
        times.append(time.monotonic() - start)
    with pytest.raises(StopIteration):
        next(batches)
    return payloads, times


def assert_exactly_once(payloads: list[bytes], expected: dict[str, bytes]) -> None:
    """Every written payload came once (payloads are random, so they identify the file)."""
    got = Counter(payloads)
    want = Counter(expected.values())
    assert sum(got.values()) == sum(want.values()), "samples lost or duplicated"
    wrong = [len(p) for p in got if p not in want]
    assert not wrong, f"{len(wrong)} samples with bytes that were never written"
    assert got == want


def volume_index(cluster: LocalCluster, server: str) -> int:
    return [u.split("://")[1] for u in cluster.volume_urls].index(server)


def busiest_server(cluster: LocalCluster, client: sd.Client, paths: list[str]) -> int:
    """The volume server that reads of ``paths`` ask first most often."""
    counts: Counter[str] = Counter()
    core = client._async()
    for path in paths:
        for chunk in client.stat(path).chunks:
            counts[client._run(core.locations.lookup(chunk.volume_id))[0]] += 1
    return volume_index(cluster, counts.most_common(1)[0][0])


# -- a volume server dies or freezes mid-epoch ----------------------------------------------


@pytest.fixture(scope="module")
def replicated_folder(cluster_replicated: LocalCluster) -> tuple[str, dict[str, bytes]]:
    root = f"/t/rel-replicated-{uuid.uuid4().hex[:8]}"
    with cluster_replicated.client() as client:
        return root, write_folder(client, root, classes=3, per_class=64, sizes=(2000, 60_000))


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_volume_server_lost_mid_epoch_loses_no_sample(cluster_replicated: LocalCluster,
                                                      replicated_folder: Any,
                                                      fault: str) -> None:
    root, files = replicated_folder
    config = sd.Config(master=cluster_replicated.master_url, location_ttl=600)
    ds = SeaweedImageFolder(f"{cluster_replicated.filer_url}{root}", loader=raw, config=config)
    try:
        with cluster_replicated.client() as client:
            victim = busiest_server(cluster_replicated, client, list(files))
        loader = loader_for(ds)
        strike = getattr(cluster_replicated, f"{fault}_volume")
        payloads, times = timed_epoch(loader, {len(loader) // 3: lambda: strike(victim)})
        assert_exactly_once(payloads, files)
        assert max(times) < BATCH_BOUND_S, f"a batch took {max(times):.1f}s"
        stats = ds.stats()
        assert stats["failovers"] >= 1  # the victim held replicas that were asked first
        # The next epoch, with the server still gone, is as complete.
        payloads, times = timed_epoch(loader)
        assert_exactly_once(payloads, files)
        assert max(times) < BATCH_BOUND_S
    finally:
        ds.close()


# -- connections reset, cut short or slow, in front of the volume server and the filer -----


@pytest.fixture(scope="module")
def plain_folder(cluster: LocalCluster) -> tuple[str, dict[str, bytes]]:
    root = f"/t/rel-plain-{uuid.uuid4().hex[:8]}"
    with cluster.client() as client:
        return root, write_folder(client, root, classes=2, per_class=56, sizes=(20_000, 90_000))


class DroppingProxy(FaultProxy):
    """A :class:`FaultProxy` that can also abort every open connection at once (a network
    blip), so that the faults armed for new connections hit reads in the middle of an epoch,
    not only the first connections of a keep-alive pool."""

    def drop_all(self) -> None:
        assert self._loop is not None
        done = threading.Event()

        def cancel() -> None:
            for task in list(self._tasks):
                task.cancel()
            done.set()

        self._loop.call_soon_threadsafe(cancel)
        assert done.wait(10)


@pytest.fixture
def dropping_proxy() -> Iterator[Callable[[str], DroppingProxy]]:
    started: list[DroppingProxy] = []

    def make(target: str) -> DroppingProxy:
        started.append(DroppingProxy(target).start())  # type: ignore[arg-type]
        return started[-1]

    yield make
    for proxy in started:
        proxy.close()


@pytest.fixture
def volume_behind_proxy(cluster: LocalCluster, dropping_proxy: Callable[[str], DroppingProxy],
                        monkeypatch: pytest.MonkeyPatch) -> DroppingProxy:
    """A proxy in front of the (only) volume server; the master's answers are rewritten to
    name the proxy, in this process and in the DataLoader workers it forks."""
    real = cluster.volume_urls[0].split("://")[1]
    proxy = dropping_proxy(cluster.volume_urls[0])
    ask = volumes.VolumeLocations._ask

    async def via_proxy(self: volumes.VolumeLocations, master: str, volume_id: str,
                        path: str) -> list[str]:
        servers = await ask(self, master, volume_id, path)
        return [f"127.0.0.1:{proxy.port}" if s == real else s for s in servers]

    monkeypatch.setattr(volumes.VolumeLocations, "_ask", via_proxy)
    return proxy


def fault_schedule(proxy: DroppingProxy, batches: int,
                   slow: float) -> dict[int, Callable[[], None]]:
    """Before every other batch: every open connection aborted, so that the reads in flight
    fail and the next ones need new connections, then one fault armed for the next new
    connection (in turn an RST after some response bytes, a FIN after some, a first byte
    ``slow`` seconds late). In that order: a fault armed first could be taken by a connection
    opened just before the abort, and be cancelled with it unused."""
    rng = random.Random(batches)
    arms = [lambda: proxy.reset_after(rng.randrange(100, 20_000)),
            lambda: proxy.truncate(rng.randrange(100, 20_000)),
            lambda: proxy.delay_first_byte(slow)]

    def strike(k: int) -> None:
        proxy.drop_all()
        arms[(k // 2) % len(arms)]()

    return {k: (lambda k=k: strike(k)) for k in range(1, batches, 2)}  # type: ignore[misc]


def test_flaky_volume_link_mid_epoch_never_yields_a_wrong_byte(
        cluster: LocalCluster, plain_folder: Any, volume_behind_proxy: DroppingProxy) -> None:
    root, files = plain_folder
    proxy = volume_behind_proxy
    config = sd.Config(master=cluster.master_url, memory_cache_bytes=0)
    ds = SeaweedImageFolder(f"{cluster.filer_url}{root}", loader=raw, config=config,
                            prefetch=2)  # reads keep going until the end of the epoch
    try:
        loader = loader_for(ds)
        # A first byte later than volume_timeout (1 s): that try is given up and repeated.
        payloads, times = timed_epoch(loader, fault_schedule(proxy, len(loader), slow=1.5))
        assert_exactly_once(payloads, files)
        assert max(times) < BATCH_BOUND_S, f"a batch took {max(times):.1f}s"
        stats = ds.stats()
        assert proxy.resets >= 2, (proxy.resets, stats)  # the cuts hit reads
        assert stats["failovers"] >= 3  # each cut or slow try was given up and asked again
        assert stats["bytes_fetched"] >= sum(map(len, files.values()))
    finally:
        ds.close()


def test_flaky_filer_link_mid_epoch_when_reading_through_the_filer(
        cluster: LocalCluster, plain_folder: Any,
        dropping_proxy: Callable[[str], DroppingProxy]) -> None:
    """No master known: every byte comes through the filer, whose link is cut again and
    again; retries make every read whole."""
    root, files = plain_folder
    proxy = dropping_proxy(cluster.filer_url)
    config = sd.Config(filer_grpc_port=1, memory_cache_bytes=0)  # discovery fails: filer reads
    ds = SeaweedImageFolder(f"{proxy.url}{root}", loader=raw, config=config, prefetch=2)
    try:
        loader = loader_for(ds)
        payloads, times = timed_epoch(loader, fault_schedule(proxy, len(loader), slow=0.5))
        assert_exactly_once(payloads, files)
        assert max(times) < BATCH_BOUND_S, f"a batch took {max(times):.1f}s"
        stats = ds.stats()
        assert proxy.resets >= 2, (proxy.resets, stats)
        assert stats["retries"] >= 3
    finally:
        ds.close()


# -- filer and master restarts (a private cluster: they take the whole cluster down) --------


@pytest.fixture(scope="module")
def restartable() -> Iterator[LocalCluster]:
    with LocalCluster(volumes=1, filer_args=("-maxMB=1",), stop_grace=1.0) as started:
        yield started


@pytest.fixture(autouse=True)
def _heal_restartable(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "restartable" in request.fixturenames:
        request.getfixturevalue("restartable").heal()


@pytest.fixture(scope="module")
def restart_data(restartable: LocalCluster) -> dict[str, Any]:
    root = f"/t/rel-restart-{uuid.uuid4().hex[:8]}"
    with restartable.client() as client:
        files = write_folder(client, root, classes=2, per_class=48, sizes=(1000, 40_000))
        shards = {}
        for i in range(6):
            samples = [os.urandom(300 + j) for j in range(20)]
            path = f"{root}-shards/s{i}.pt"
            client.write(path, pt_bytes(samples))
            shards[path] = samples
    return {"root": root, "files": files, "shards": shards}


class FilerOutage:
    """Called (between two batches): stops the filer, and starts it again ``down`` seconds
    later from a timer thread, while the epoch goes on; :meth:`join` waits until it is back."""

    def __init__(self, cluster: LocalCluster, down: float = 1.0) -> None:
        self._cluster = cluster
        self._timer = threading.Timer(down, cluster.start_filer)

    def __call__(self) -> None:
        self._cluster.stop_filer()
        self._timer.start()

    def join(self) -> None:
        self._timer.join(60)
        assert not self._timer.is_alive()


RESTART_RETRIES = 8
"""Retries that span a filer restart (a retry window of 5-10 s). The default (5: a window of
0.8-1.55 s) is shorter than the time a filer's port stays closed while it restarts (1-1.5 s
for a LocalCluster filer, stop and start): see
test_a_filer_down_for_two_seconds_outlasts_the_default_retries."""


@pytest.mark.parametrize("through_filer", [False, True], ids=["volume-reads", "filer-reads"])
def test_filer_restart_mid_epoch_completes_it(restartable: LocalCluster,
                                              restart_data: dict[str, Any],
                                              through_filer: bool) -> None:
    """The filer goes down for a second (and restarts) a quarter into the epoch. The listing
    carries every chunk list, so reads from volume servers never need it; reading through
    the filer, the reads in the gap retry until it is back."""
    files = restart_data["files"]
    config = (sd.Config(filer_grpc_port=1, retries=RESTART_RETRIES) if through_filer
              else sd.Config(master=restartable.master_url))
    ds = SeaweedImageFolder(f"{restartable.filer_url}{restart_data['root']}", loader=raw,
                            config=config.replace(memory_cache_bytes=0), prefetch=2)
    try:
        loader = loader_for(ds)
        outage = FilerOutage(restartable)
        payloads, _ = timed_epoch(loader, {len(loader) // 4: outage})
        outage.join()
        assert_exactly_once(payloads, files)
        stats = ds.stats()
        if through_filer:
            assert stats["filer_requests"] >= len(files) and stats["retries"] >= 1
        else:
            assert stats["volume_requests"] >= len(files)
    finally:
        ds.close()


def test_filer_restart_mid_epoch_of_a_shard_dataset(restartable: LocalCluster,
                                                    restart_data: dict[str, Any]) -> None:
    """Each shard is stat'ed on the filer when its turn comes; an outage is waited out."""
    shards = restart_data["shards"]
    pattern = f"{restartable.filer_url}{restart_data['root']}-shards/*.pt"
    config = sd.Config(master=restartable.master_url, metadata_ttl=0, retries=RESTART_RETRIES)
    ds = ShardDataset(pattern, prefetch=0, config=config)
    try:
        got: list[bytes] = []
        outage = FilerOutage(restartable)
        for i, sample in enumerate(ds):
            if i == 25:  # in the second of six shards
                outage()
            got.append(sample)
        outage.join()
        assert Counter(got) == Counter(s for samples in shards.values() for s in samples)
        assert ds.stats()["retries"] >= 1  # the next shard's metadata waited for the filer
    finally:
        ds.close()


def test_a_filer_down_for_two_seconds_outlasts_the_default_retries(
        restartable: LocalCluster, restart_data: dict[str, Any]) -> None:
    path = sorted(restart_data["files"])[0]
    with restartable.client() as client:
        restartable.stop_filer()
        back = threading.Timer(2.0, restartable.start_filer, kwargs={"wait": False})
        back.start()
        try:
            assert client.stat(path).size == len(restart_data["files"][path])
        finally:
            back.cancel()
            back.join()


def files_by_volume(client: sd.Client, paths: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for path in paths:
        [chunk] = client.stat(path).chunks
        groups.setdefault(chunk.volume_id, []).append(path)
    return groups


@pytest.fixture
def volume_groups(restartable: LocalCluster,
                  restart_data: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The folder's files on one volume (``known``) and those on the others (``new``)."""
    with restartable.client() as client:
        groups = files_by_volume(client, sorted(restart_data["files"]))
    assert len(groups) >= 2, "the files should span several volumes"
    first, *others = sorted(groups)
    return groups[first], [path for vid in others for path in groups[vid]]


def test_master_down_known_volumes_are_read_from_cached_locations(
        restartable: LocalCluster, restart_data: dict[str, Any],
        volume_groups: tuple[list[str], list[str]]) -> None:
    files = restart_data["files"]
    known, _ = volume_groups
    with restartable.client(memory_cache_bytes=0) as fresh, \
            restartable.client(memory_cache_bytes=0, location_ttl=0) as expiring:
        for path in known:  # looks the volume up: its location is cached
            assert fresh.read(path) == files[path]
        assert expiring.read(known[0]) == files[known[0]]
        restartable.stop_master()
        start = time.monotonic()
        for path in known:
            assert fresh.read(path) == files[path]
        assert time.monotonic() - start < BATCH_BOUND_S  # no master asked
        assert fresh.stats()["master_requests"] == 1
        # An expired location is asked again; the master does not answer, the old one is used.
        for path in known[:2]:
            start = time.monotonic()
            assert expiring.read(path) == files[path]
            assert time.monotonic() - start < BATCH_BOUND_S


def test_master_restart_new_lookups_wait_until_it_is_back(
        restartable: LocalCluster, restart_data: dict[str, Any],
        volume_groups: tuple[list[str], list[str]]) -> None:
    files = restart_data["files"]
    _, new = volume_groups
    with restartable.client(memory_cache_bytes=0) as client:
        restartable.stop_master()
        back = threading.Timer(2.0, restartable.start_master, kwargs={"wait": False})
        back.start()
        try:
            start = time.monotonic()
            for path in new:
                assert client.read(path) == files[path]
            assert time.monotonic() - start >= 1.5  # they did have to wait
        finally:
            back.cancel()
            back.join()
