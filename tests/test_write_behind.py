"""The tiered cache's write-behind to the disk tier: blocks queue up and the writer thread
files them in bursts (one index transaction each), bounded in count and bytes; a reader
waits only when too much is queued; drain() and close() do not linger."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from seaweed_data.config import Config
from seaweed_data.core.cache import tiered
from seaweed_data.core.cache.keys import BlockKey
from seaweed_data.core.cache.tiered import TieredCache
from seaweed_data.core.metrics import Counters


def key(i: int, size: int) -> BlockKey:
    return BlockKey(f"/data/{i:05d}.bin", "v1", 0, size)


@pytest.fixture
def cache(tmp_path: Path) -> Any:
    made = TieredCache(Config(disk_cache_dir=str(tmp_path / "cache")), Counters())
    bursts: list[int] = []
    assert made.disk is not None
    put_many = made.disk.put_many

    def counting(items: Any) -> int:
        bursts.append(sum(len(data) for _, data, _ in items))
        return put_many(items)
    made.disk.put_many = counting  # type: ignore[method-assign]
    made.bursts = bursts
    yield made
    made.close()


def test_blocks_put_in_a_stream_are_filed_in_few_bursts(cache: Any) -> None:
    async def main() -> None:
        for i in range(300):
            await cache.put(key(i, 1000), bytes([i % 256]) * 1000)
        await cache.drain()
    asyncio.run(main())
    assert sum(cache.bursts) == 300 * 1000  # every block filed, once
    assert len(cache.bursts) <= 6  # bursts of up to WRITE_BURST, not one per block
    fresh = TieredCache(Config(disk_cache_dir=cache.disk.directory), Counters())
    try:
        assert fresh.get_now(key(7, 1000)) == bytes([7]) * 1000
    finally:
        fresh.close()


def test_a_burst_is_bounded_in_bytes(cache: Any) -> None:
    block = 1 << 20

    async def main() -> None:
        for i in range(12):
            await cache.put(key(i, block), bytes([i]) * block)
        await cache.drain()
    asyncio.run(main())
    assert sum(cache.bursts) == 12 * block
    assert max(cache.bursts) <= tiered.WRITE_BURST_BYTES


def test_a_reader_waits_only_past_the_bound_of_queued_bytes(
        cache: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiered, "MAX_PENDING_BYTES", 5000)
    release = threading.Event()
    put_many = cache.disk.put_many

    def slow(items: Any) -> int:
        release.wait(5)
        return put_many(items)
    cache.disk.put_many = slow
    queued: list[int] = []

    async def main() -> None:
        for i in range(4):  # 4000 bytes: within the bound, no wait although nothing is filed
            await cache.put(key(i, 1000), b"x" * 1000)
            queued.append(cache._queued_bytes)
        asyncio.get_running_loop().call_later(0.2, release.set)
        started = time.monotonic()
        for i in range(4, 8):  # past the bound: waits for the writer
            await cache.put(key(i, 1000), b"x" * 1000)
        queued.append(cache._queued_bytes)
        return time.monotonic() - started
    waited = asyncio.run(main())
    assert queued[:4] == [1000, 2000, 3000, 4000]  # (taken off the queue only after lingering)
    assert queued[4] <= 5000 and waited >= 0.1
    asyncio.run(cache.drain())
    assert sum(cache.bursts) == 8000


def test_drain_does_not_wait_for_a_whole_burst(cache: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiered, "WRITE_LINGER_S", 30.0)  # would linger for good

    async def main() -> float:
        await cache.put(key(1, 100), b"y" * 100)
        started = time.monotonic()
        await cache.drain()
        return time.monotonic() - started
    assert asyncio.run(main()) < 5
    assert cache.bursts == [100]
    cache.close()  # nothing queued: returns at once
