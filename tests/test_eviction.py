"""Eviction policies and the memory tier: decisions, admission, cursor, budget, threads, benchmark.

The property tests replay random operation sequences against a plain reference model of the
hint stream (a list and a cursor, searched linearly) and check every eviction and admission
decision the tier made against it.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lru import LRU

from seaweed_data.core.cache.future import NEVER, FutureAwareEviction
from seaweed_data.core.cache.keys import BlockKey
from seaweed_data.core.cache.lru import LRUEviction
from seaweed_data.core.cache.memory import MemoryTier
from seaweed_data.core.cache.policy import make_policy
from seaweed_data.errors import ConfigError

ITEMS = [f"/d/{name}" for name in "abcdefgh"]


def key(item: str, size: int = 10, block: int = 0) -> BlockKey:
    """Block ``block`` of ``item`` (blocks of one item are ``size`` bytes apart)."""
    return BlockKey(item, "v1", block * size, (block + 1) * size)


def tier(capacity: int, policy: str = "future") -> MemoryTier:
    return MemoryTier(capacity, make_policy(policy))


def fill(cache: MemoryTier, *items: str, size: int = 10) -> None:
    for item in items:
        assert cache.put(key(item, size), b"x" * size)


# -- policy selection and the basic tier API -----------------------------------------------------

def test_make_policy_by_name() -> None:
    assert isinstance(make_policy("lru"), LRUEviction)
    assert isinstance(make_policy("future"), FutureAwareEviction)
    with pytest.raises(ConfigError, match="'belady'"):
        make_policy("belady")


def test_budget_replace_remove_clear_and_stats() -> None:
    cache = tier(100)
    assert cache.capacity_bytes == 100
    assert not cache.put(key("big", 101), b"x" * 101)  # larger than the whole tier
    assert cache.put(key("a", 60), memoryview(bytearray(60)))
    assert cache.put(key("a", 60), b"y" * 60)  # replacing a key does not double-count it
    assert cache.used_bytes == 60 and len(cache) == 1 and key("a", 60) in cache
    assert cache.get(key("a", 60)) == b"y" * 60
    assert cache.get(key("zz")) is None
    assert cache.remove(key("a", 60)) and not cache.remove(key("a", 60))
    fill(cache, "b", "c")
    cache.clear()
    assert len(cache) == 0 and cache.used_bytes == 0 and key("b") not in cache
    assert cache.stats() == {"hits": 1, "misses": 1, "evictions": 0, "rejected": 1, "bytes": 0,
                             "entries": 0, "capacity": 100}
    assert "future" in repr(cache)
    with pytest.raises(ConfigError):
        MemoryTier(-1, make_policy("lru"))


def test_zero_capacity_stores_only_empty_values() -> None:
    cache = tier(0, "lru")
    assert not cache.put(key("a"), b"x")
    assert cache.put(key("e", 0), b"")
    assert cache.get(key("e", 0)) == b""


# -- LRU ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["lru", "future"])
def test_lru_order_and_future_without_hints_is_lru(policy: str) -> None:
    cache = tier(30, policy)
    fill(cache, "a", "b", "c")
    assert cache.get(key("a")) is not None  # a is now the most recent; b the least
    fill(cache, "d")
    assert key("b") not in cache and all(key(i) in cache for i in "acd")
    cache.on_demand("c")  # hints of an empty stream change nothing
    fill(cache, "e")
    assert key("c") not in cache
    assert cache.stats()["evictions"] == 2 and cache.stats()["rejected"] == 0


def test_lru_ignores_hints() -> None:
    cache = tier(20, "lru")
    cache.set_future(["a", "b"])
    cache.extend_future(["a"])
    fill(cache, "a", "b")
    cache.on_demand("a")
    fill(cache, "c")  # LRU: a goes although it is the next hinted read
    assert key("a") not in cache


def test_future_with_an_emptied_stream_is_lru_again() -> None:
    cache = tier(20)
    cache.set_future(["a", "b"])
    cache.set_future([])
    fill(cache, "a", "b", "c")
    assert key("a") not in cache


# -- a tier with a disk tier behind it keeps only what the hints read ----------------------------

def backed(capacity: int, policy: str = "future") -> MemoryTier:
    return MemoryTier(capacity, make_policy(policy), keep_unneeded=False)


def test_a_backed_tier_drops_blocks_once_the_hints_no_longer_read_them() -> None:
    cache = backed(1000)
    cache.set_future(["a", "b", "a", "c", "d"])
    fill(cache, "a", "b", "c")
    cache.on_demand("a")  # read again later: kept
    cache.on_demand("b")  # b is read now: kept until the next read
    assert all(key(i) in cache for i in "abc")
    cache.on_demand("a")  # b's read is over; a, read now for the last time, stays for now
    assert key("b") not in cache and key("a") in cache and key("c") in cache
    cache.on_demand_all(["c"])  # reported after the fact: every unneeded block goes
    assert len(cache) == 0 and cache.used_bytes == 0


def test_a_backed_tier_refuses_what_the_hints_do_not_read() -> None:
    cache = backed(1000)
    cache.set_future(["a", "b"])
    assert not cache.put(key("z"), b"x" * 10)
    assert cache.stats()["rejected"] == 1
    fill(cache, "a")
    cache.on_demand("a")
    assert not cache.put(key("a"), b"x" * 10)  # fetched on demand, not read again
    cache.on_demand("b")
    fill(cache, "y", "b")  # no hints ahead: nothing is known, anything is kept (LRU)
    cache.on_demand_all(["y"])
    assert key("y") in cache and key("b") in cache


def test_an_lru_tier_keeps_everything_even_backed() -> None:
    cache = backed(1000, "lru")
    cache.set_future(["a"])
    fill(cache, "a", "z")
    cache.on_demand("a")
    cache.on_demand_all(["z"])
    assert key("a") in cache and key("z") in cache


# -- future: eviction and admission --------------------------------------------------------------

def test_future_evicts_the_farthest_next_use() -> None:
    cache = tier(30)
    cache.set_future(["a", "b", "c", "d"])
    fill(cache, "c", "a", "b")
    assert not cache.put(key("d"), b"x" * 10)  # d is read after everything cached
    cache.on_demand("a")
    cache.set_future(["b", "d", "a", "c"])
    fill(cache, "d")  # c is now the farthest
    assert key("c") not in cache and all(key(i) in cache for i in "abd")


def test_future_evicts_unhinted_entries_first_and_refuses_unhinted_items() -> None:
    cache = tier(30)
    fill(cache, "x", "y", "a")  # stored before any hint: no next use
    cache.set_future(["a", "b"])
    assert cache.get(key("x")) is not None  # x is now more recent than y among the unhinted
    fill(cache, "b")
    assert key("y") not in cache and key("x") in cache
    assert not cache.put(key("z"), b"x" * 10)  # no next use while hints exist
    assert cache.stats()["rejected"] == 1
    fill(cache, "b")  # already cached: replacing it needs no eviction


def test_set_future_keeps_the_recency_of_unhinted_entries() -> None:
    cache = tier(30)
    fill(cache, "x", "y", "z")
    assert cache.get(key("x")) is not None  # recency, least first: y, z, x
    cache.set_future(["a", "z"])
    fill(cache, "a")
    assert key("y") not in cache
    assert cache.put(key("a", block=1), b"x" * 10)
    assert key("x") not in cache and key("z") in cache


def test_a_new_block_refreshes_the_recency_of_its_unhinted_item() -> None:
    cache = tier(30)
    cache.set_future(["a"])
    fill(cache, "x", "y")
    assert cache.put(key("x", block=1), b"x" * 10)
    fill(cache, "a")
    assert key("y") not in cache and key("x") in cache


def test_a_block_of_the_farthest_item_displaces_a_sibling() -> None:
    cache = tier(30)
    cache.set_future(["a", "b"])
    fill(cache, "a")
    assert cache.put(key("b", block=0), b"x" * 10) and cache.put(key("b", block=1), b"x" * 10)
    # b is the farthest item; its next block is not farther than b itself: admitted.
    assert cache.put(key("b", block=2), b"x" * 10)
    assert key("a") in cache and sum(key("b", block=i) in cache for i in range(3)) == 2


def test_admission_when_room_needs_no_eviction() -> None:
    cache = tier(30)
    cache.set_future(["a"])
    fill(cache, "z", "y")  # unhinted, but there is room: admitted
    assert len(cache) == 2


@pytest.mark.parametrize(("size", "admitted"), [(15, True), (25, False)])
def test_admission_evicting_several_entries(size: int, admitted: bool) -> None:
    cache = tier(30)
    cache.set_future(["a", "b", "c"])
    fill(cache, "a", "c")
    fill(cache, "x", size=5)  # unhinted
    # b (next use 1): x (unhinted) goes, then c (use 2), which is read after b, goes too; a
    # (use 0) is read before b, so b is refused if it still does not fit.
    assert cache.put(key("b", size), b"x" * size) is admitted
    assert key("x", 5) not in cache and key("c") not in cache and key("a") in cache
    assert cache.used_bytes == (10 + size if admitted else 10)
    assert cache.stats()["rejected"] == (0 if admitted else 1)


def test_several_blocks_per_item_share_its_next_use() -> None:
    cache = tier(40)
    cache.set_future(["a", "b"])
    for block in range(3):
        assert cache.put(key("b", block=block), b"x" * 10)
    fill(cache, "a")
    assert cache.put(key("a", block=1), b"x" * 10)  # evicts a block of b, the farthest item
    assert key("a", block=1) in cache and key("a") in cache
    assert sum(key("b", block=i) in cache for i in range(3)) == 2
    for block in range(3):
        cache.remove(key("b", block=block))
    policy = cache.policy
    assert isinstance(policy, FutureAwareEviction)
    assert set(policy._keys) == {"a"}  # the item is forgotten with its last block


# -- future: the cursor and the hint stream ------------------------------------------------------

def test_on_demand_cursor_with_repeats_skips_and_unknown_items() -> None:
    policy = FutureAwareEviction()
    policy.set_future(["a", "b", "a", "c", "b"])
    assert policy.next_use("a") == 0 and policy.next_use("c") == 3
    policy.on_demand("a")
    assert policy.cursor == 1 and policy.next_use("a") == 2
    policy.on_demand("zzz")  # not hinted: the cursor stays
    assert policy.cursor == 1
    policy.on_demand("a")  # b at 1 is skipped: its next use moves on to 4
    assert policy.cursor == 3 and policy.next_use("a") == NEVER and policy.next_use("b") == 4
    policy.on_demand("a")  # no more a ahead
    assert policy.cursor == 3 and policy.remaining_hints == 2
    policy.on_demand("b")
    assert policy.cursor == 5 and policy.remaining_hints == 0 and policy.next_use("c") == NEVER


def test_set_future_replaces_the_stream_and_honours_start() -> None:
    policy = FutureAwareEviction()
    policy.set_future(["a", "b", "c"])
    policy.on_demand("a")
    policy.set_future(["c", "d", "e"], start=1)  # resume: c was already read
    assert policy.next_use("b") == NEVER and policy.next_use("c") == NEVER
    assert policy.next_use("d") == policy.cursor == 1 and policy.remaining_hints == 2
    with pytest.raises(ValueError, match="outside"):
        policy.set_future(["a"], start=2)


def test_set_future_refiles_cached_items() -> None:
    cache = tier(30)
    cache.set_future(["a", "b", "c"])
    fill(cache, "a", "b", "c")
    cache.set_future(["c", "b", "d"])  # a loses its next use: it goes first
    fill(cache, "d")
    assert key("a") not in cache


def test_extend_future_gives_cached_items_a_next_use() -> None:
    cache = tier(30)
    cache.set_future(["a", "b"])
    fill(cache, "a", "b", "c")  # c: no next use yet
    cache.extend_future(["d", "c", "b", "a"])
    policy = cache.policy
    assert isinstance(policy, FutureAwareEviction)
    assert policy.next_use("c") == 3 and policy.next_use("a") == 0
    cache.on_demand("a")
    cache.on_demand("b")
    assert cache.put(key("d"), b"x" * 10)  # a (next use 5) is now the farthest
    assert key("a") not in cache and key("c") in cache


def test_policy_used_on_its_own_tolerates_empty_state() -> None:
    policy = FutureAwareEviction()
    policy.removed(key("never-stored"))
    policy.set_future(["a"])
    assert policy.victim(key("a"), LRU(4)) is None  # nothing cached: nothing to evict
    assert LRUEviction().victim(key("a"), LRU(4)) is None


def test_stale_heap_entries_are_compacted() -> None:
    policy = FutureAwareEviction()
    cache = MemoryTier(100, policy)
    cache.set_future(["a"] * 5000)
    fill(cache, "a")
    for _ in range(5000):
        cache.on_demand("a")  # each read moves a's next use, leaving a stale entry behind
    assert len(policy._heap) <= 1026 and policy.remaining_hints == 0


# -- properties ------------------------------------------------------------------------------------

class StreamModel:
    """The hint stream as a list and a cursor, searched linearly."""

    def __init__(self) -> None:
        self.stream: list[str] = []
        self.cursor = 0

    def next_use(self, item: str) -> float:
        for index in range(self.cursor, len(self.stream)):
            if self.stream[index] == item:
                return index
        return NEVER

    def on_demand(self, item: str) -> None:
        found = self.next_use(item)
        if found != NEVER:
            self.cursor = int(found) + 1


OPS = st.lists(st.tuples(st.sampled_from(["put", "get", "remove", "demand", "set", "extend"]),
                         st.sampled_from(ITEMS), st.integers(0, 2), st.integers(1, 40),
                         st.lists(st.sampled_from(ITEMS), max_size=12)),
               max_size=60)


def apply(cache: MemoryTier, model: StreamModel, op: tuple[str, str, int, int, list[str]],
          check: bool) -> None:
    """One operation; with ``check``, eviction and admission are checked against the model."""
    kind, item, block, size, items = op
    k = BlockKey(item, "v1", block * 100, block * 100 + size)
    if kind == "put":
        before = {c.item for c in cache}
        stored = cache.put(k, b"x" * size)
        after = {c.item for c in cache}
        if check and model.cursor < len(model.stream):  # with no hints it is LRU
            refused = not stored and size <= cache.capacity_bytes
            _check_decision(model, item, before - after - {item}, after, refused)
    elif kind == "get":
        cache.get(k)
    elif kind == "remove":
        cache.remove(k)
    elif kind == "demand":
        cache.on_demand(item)
        model.on_demand(item)
    elif kind == "set":
        cache.set_future(items, min(block, len(items)))
        model.stream, model.cursor = list(items), min(block, len(items))
    else:
        cache.extend_future(items)
        model.stream += items


def _check_decision(model: StreamModel, item: str, evicted: set[str], kept: set[str],
                    refused: bool) -> None:
    wanted = model.next_use(item)
    soonest_evicted = min((model.next_use(e) for e in evicted), default=NEVER)
    latest_kept = max((model.next_use(c) for c in kept - {item}), default=-1)
    # Belady: nothing evicted is read sooner than anything still cached, or than the newcomer.
    assert soonest_evicted >= latest_kept
    assert soonest_evicted >= wanted or not evicted
    if refused:  # admission: refused only if read after everything cached, or never
        assert wanted == NEVER or wanted > latest_kept


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, capacity=st.integers(0, 120), policy=st.sampled_from(["lru", "future"]))
def test_budget_holds_and_future_decides_like_belady(
        ops: list[tuple[str, str, int, int, list[str]]], capacity: int, policy: str) -> None:
    cache = tier(capacity, policy)
    model = StreamModel()
    for op in ops:
        apply(cache, model, op, check=policy == "future")  # LRU makes no Belady promises
        stored = cache.keys()
        assert cache.used_bytes == sum(c.size for c in stored) <= capacity
        if policy == "future":
            future = cache.policy
            assert isinstance(future, FutureAwareEviction)
            for name in ITEMS:
                expected = model.next_use(name)
                got = future.next_use(name)
                assert (got == expected == NEVER) or got - future.cursor == expected - model.cursor


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["put", "get", "remove"]), st.sampled_from(ITEMS),
                              st.integers(1, 40)), max_size=60),
       capacity=st.integers(0, 120))
def test_future_without_hints_matches_lru(ops: list[tuple[str, str, int]], capacity: int) -> None:
    caches = [tier(capacity, "lru"), tier(capacity, "future")]
    for kind, item, size in ops:
        k = key(item, size)
        results = [getattr(c, kind)(k, b"x" * size) if kind == "put" else getattr(c, kind)(k)
                   for c in caches]
        assert results[0] == results[1]
        assert caches[0].keys() == caches[1].keys()


# -- threads and fork ----------------------------------------------------------------------------

def test_threads_share_a_tier_within_budget() -> None:
    cache = tier(500)
    cache.set_future(ITEMS * 50)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(2000):
                k = key(rng.choice(ITEMS), rng.randint(1, 120), rng.randint(0, 3))
                if cache.get(k) is None:
                    cache.put(k, b"x" * k.size)
                cache.on_demand(k.item)
                assert cache.used_bytes <= 500
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cache.used_bytes == sum(c.size for c in cache) <= 500
    stats = cache.stats()
    assert stats["hits"] + stats["misses"] == 8000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_while_the_lock_is_held_does_not_deadlock_the_child() -> None:
    cache = tier(100)
    with cache._lock:  # another thread mid-put at fork time
        pid = os.fork()
        if pid == 0:  # child: the tier must be usable
            ok = cache.put(key("a"), b"x" * 10) and cache.get(key("a")) is not None
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# -- the benchmark, small --------------------------------------------------------------------------

def _benchmark() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "eviction.py"
    spec = importlib.util.spec_from_file_location("eviction_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_eviction_benchmark_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _benchmark()
    report = bench.run(seed=3, keys=500, epochs=3)
    assert report == bench.run(seed=3, keys=500, epochs=3)  # deterministic
    for row in report["rows"]:
        hits = {name: s["hits"] for name, s in row["policies"].items()}
        assert hits["future"] >= 0.98 * hits["belady"]
        assert hits["future"] > hits["lru"]
        fetched = {name: s["fetched_bytes"] for name, s in row["policies"].items()}
        assert fetched["future"] < fetched["lru"]
    assert bench.targets_met(report)
    assert bench.main(["--keys", "300", "--out", str(tmp_path)]) == 0
    assert "| 50% | future |" in (tmp_path / "eviction.md").read_text()
    assert (tmp_path / "eviction.json").exists()
    assert "belady" in capsys.readouterr().out


def test_missing_names_the_keys_not_stored() -> None:
    cache = tier(100)
    fill(cache, "a", "b")
    assert cache.missing([key("a"), key("c"), key("b"), key("d")]) == [key("c"), key("d")]
    assert cache.missing([]) == []


def test_the_same_future_told_again_with_more_continues_it_exactly() -> None:
    rng = random.Random(7)
    first = [rng.choice(ITEMS) for _ in range(40)]
    later = [rng.choice(ITEMS) for _ in range(40)]
    told_again, fresh = tier(50), tier(50)
    told_again.set_future(first)
    fill(told_again, *ITEMS[:5])
    for item in first[:15]:
        told_again.on_demand(item)
    policy = told_again.policy
    assert isinstance(policy, FutureAwareEviction)
    stream = policy._stream
    told_again.set_future(first[15:] + later)  # continued: appended, not rebuilt
    assert policy._stream is stream and policy.remaining_hints == 25 + 40
    fresh.set_future(first[15:] + later)
    fill(fresh, *ITEMS[:5])
    other = fresh.policy
    assert isinstance(other, FutureAwareEviction)
    offset = policy.cursor - other.cursor
    for item in ITEMS:
        assert policy.next_use(item) - offset == other.next_use(item)
    assert policy.victim(key("h"), told_again._entries) == other.victim(key("h"), fresh._entries)
