"""The disk tier: pack files and their shared index, checked against its contract.

Real processes (fork and spawn) share one directory; writers are SIGKILLed at random moments
while another process reads; faults that no ordinary machine produces on demand (ENOSPC) are
injected at the one low-level write function, and produced for real on a tiny tmpfs when the
tests run as root. The index and pack files are inspected directly (:mod:`disk_files`).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import multiprocessing
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from disk_files import (
    connect,
    consistent_view,
    index_row,
    open_paths,
    pack_files,
    pack_total,
    payload_for,
    segments,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from seaweed_data.core.cache import disk, disk_writer
from seaweed_data.core.cache.disk import DiskTier
from seaweed_data.core.cache.disk_format import (
    CHECKSUM_ID,
    CHECKSUMS,
    HEADER_SIZE,
    EntryFormatError,
    checksum,
    decode_entry,
    encode_entry,
)
from seaweed_data.core.cache.disk_layout import entry_key

KB = 1024
IS_ROOT = os.geteuid() == 0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# -- basics ---------------------------------------------------------------------------------


def test_roundtrip_remove_contains_and_stats(root: Path) -> None:
    tier = DiskTier(root, 1 << 20)
    assert not root.exists()  # the constructor does no I/O
    data = payload_for("a", 16 * KB)
    assert tier.get("a") is None
    assert tier.put("a", data)
    assert tier.put("b", memoryview(data)[:100])
    assert tier.get("a") == data
    assert tier.get("b") == data[:100]
    assert "a" in tier and tier.has("b") and "zz" not in tier and 3 not in tier
    tier.remove("b")
    tier.remove("never-there")
    assert tier.get("b") is None and "b" not in tier
    stats = tier.stats()
    assert (stats["hits"], stats["misses"], stats["writes"]) == (2, 2, 2)
    assert stats["bytes_read"] == len(data) + 100
    assert stats["bytes_written"] == len(data) + 100
    assert pack_total(root) == 2 * HEADER_SIZE + len(data) + 100 <= stats["bytes"]
    [pack] = pack_files(root)
    assert pack in open_paths() and root / "index.db" in open_paths()
    tier.close()
    assert tier.get("a") is None and not tier.put("c", b"x") and not tier.enabled
    assert not {pack, root / "index.db"} & open_paths()
    tier.close()
    again = DiskTier(root, 1 << 20)  # closing sealed the segment: the budget is what is used
    assert again.used_bytes() == pack_total(root) and again.get("a") == data


def test_a_later_put_replaces_the_entry(root: Path) -> None:
    tier = DiskTier(root, 1 << 20)
    for size in (10, 5000, 300):
        assert tier.put("k", payload_for("k", size))
    assert tier.get("k") == payload_for("k", 300)
    assert DiskTier(root, 1 << 20).get("k") == payload_for("k", 300)
    assert pack_total(root) == 3 * HEADER_SIZE + 5310  # old versions wait for eviction


def test_entry_larger_than_capacity_is_rejected(root: Path) -> None:
    tier = DiskTier(root, 1000)
    assert not tier.put("big", bytes(1000))
    assert tier.put("fits", bytes(1000 - HEADER_SIZE))
    assert tier.stats()["rejected"] == 1
    assert tier.get("fits") == bytes(1000 - HEADER_SIZE)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="capacity_bytes"):
        DiskTier("/nonexistent", -1)
    with pytest.raises(ValueError, match="segment_bytes"):
        DiskTier("/nonexistent", 10, segment_bytes=0)


@pytest.mark.parametrize("name", [
    "../../../etc/passwd", "/etc/passwd", "a/b/../../..", "..", ".", "", "nul\0byte",
    "x" * 10240, "\udc80 lone surrogate", "packs", "index.db", "secret-token-4f3a",
])
def test_names_reach_neither_paths_nor_the_index(tmp_path: Path, name: str) -> None:
    root = tmp_path / "cache"
    tier = DiskTier(root, 1 << 20)
    payload = b"payload of " + name.encode("utf-8", "surrogatepass")
    assert tier.put(name, payload)
    assert tier.get(name) == payload
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]
    assert {p.name for p in root.iterdir()} <= {"index.db", "index.db-wal", "index.db-shm",
                                                 "lock", "packs"}
    [pack] = pack_files(root)
    assert len(pack.stem) == 16 and int(pack.stem, 16) > 0
    tier.close()
    if len(name) > 3:
        assert name.encode("utf-8", "surrogatepass") not in (root / "index.db").read_bytes()


def test_partial_writes_are_completed(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwritev = os.pwritev

    def dribble(fd: int, buffers: list[memoryview], offset: int) -> int:  # 1000 bytes a call
        return real_pwritev(fd, [bytes(buffers[0][:1000])], offset)

    tier = DiskTier(root, 1 << 20)
    monkeypatch.setattr(os, "pwritev", dribble)
    data = payload_for("k", 5555)
    assert tier.put("k", data) and tier.put("j", data[:7])
    monkeypatch.undo()
    assert tier.get("k") == data and tier.get("j") == data[:7]


def test_large_entries_are_read_in_two_parts_and_checked(root: Path) -> None:
    tier = DiskTier(root, 8 << 20)
    data = payload_for("big", 300 * KB)
    assert tier.put("big", data) and tier.get("big") == data
    row = index_row(root, "big")
    assert row is not None
    with open(row.path, "r+b") as f:
        f.seek(row.offset + row.length - 1)
        f.write(bytes([data[-1] ^ 1]))
    assert tier.get("big") is None and tier.stats()["corrupt"] == 1


# -- permissions ----------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o277])
def test_private_modes_whatever_the_umask(root: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        tier = DiskTier(root / "nested", 1 << 20)
        assert tier.put("k", b"secret") and tier.get("k") == b"secret"
    finally:
        os.umask(old)
    base = root / "nested"
    dirs = [base, base / "packs"]
    files = [base / "lock", *pack_files(base), *base.glob("index.db*")]
    assert len(files) >= 4
    assert {stat.S_IMODE(p.stat().st_mode) for p in dirs} == {0o700}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {
        p.name: 0o600 for p in files}


def test_group_writable_directory_is_refused(root: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    root.mkdir()
    root.chmod(0o770)
    tier = DiskTier(root, 1 << 20)
    with caplog.at_level(logging.WARNING, logger=disk.__name__):
        assert not tier.enabled
        assert not tier.put("k", b"v")
        assert tier.get("k") is None
    assert [r.getMessage() for r in caplog.records] == [
        f"disk cache disabled: {root} is writable by group or others (mode 770)"]
    assert list(root.iterdir()) == []


def test_group_readable_directory_warns_but_works(root: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    root.mkdir()
    root.chmod(0o750)
    with caplog.at_level(logging.WARNING, logger=disk.__name__):
        tier = DiskTier(root, 1 << 20)
        assert tier.put("k", b"v") and tier.get("k") == b"v"
    assert len(caplog.records) == 1 and "readable by group or others" in caplog.text


@pytest.mark.skipif(not IS_ROOT, reason="needs root to give the directory to another user")
def test_directory_of_another_user_is_refused(root: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    root.mkdir(mode=0o700)
    os.chown(root, 65534, 65534)
    with caplog.at_level(logging.WARNING, logger=disk.__name__):
        tier = DiskTier(root, 1 << 20)
        assert not tier.put("k", b"v")
    assert "owned by uid 65534" in caplog.text


def test_a_cache_of_the_former_layout_is_removed(root: Path) -> None:
    (root / "ab").mkdir(parents=True)
    (root / "ab" / ("ab" + "0" * 38)).write_bytes(b"old entry")
    (root / "tmp").mkdir()
    (root / "ledger").write_bytes(b"SWDLEDG1")
    assert DiskTier(root, 1 << 20).put("k", b"v")
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith("index.db")) == [
        "lock", "packs"]


# -- damaged entries, a damaged index, expiry -----------------------------------------------


def _flip(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))


def _damage_payload(root: Path, name: str) -> None:
    row = index_row(root, name)
    assert row is not None
    _flip(row.path, row.offset + HEADER_SIZE + 7)


def _damage_header(root: Path, name: str) -> None:
    row = index_row(root, name)
    assert row is not None
    _flip(row.path, row.offset + 17)  # inside expires_at


def _damage_truncate(root: Path, name: str) -> None:
    row = index_row(root, name)
    assert row is not None
    os.truncate(row.path, row.offset + row.length - 1)


def _damage_misfile(root: Path, name: str) -> None:
    """Point the row at another key's whole, valid entry of the same size."""
    with contextlib.closing(connect(root)) as db:
        db.execute("UPDATE entries SET offset = (SELECT offset FROM entries WHERE key = ?), "
                   "segment = (SELECT segment FROM entries WHERE key = ?) WHERE key = ?",
                   (entry_key("twin"), entry_key("twin"), entry_key(name)))


def _damage_length(root: Path, name: str) -> None:
    with contextlib.closing(connect(root)) as db:
        db.execute("UPDATE entries SET length = length - 5 WHERE key = ?", (entry_key(name),))


@pytest.mark.parametrize("damage", [_damage_payload, _damage_header, _damage_truncate,
                                    _damage_misfile, _damage_length])
def test_damaged_entry_is_dropped_and_refetched(root: Path, damage: Any) -> None:
    tier = DiskTier(root, 1 << 20)
    data = payload_for("k", 16 * KB)
    assert tier.put("twin", payload_for("twin", 16 * KB))
    assert tier.put("k", data)
    damage(root, "k")
    assert tier.get("k") is None  # never the twin's bytes
    assert index_row(root, "k") is None and tier.stats()["corrupt"] == 1
    assert tier.get("twin") == payload_for("twin", 16 * KB)
    assert tier.put("k", data) and tier.get("k") == data  # the caller's refetch


def test_has_many_answers_for_a_whole_epoch_of_names_at_once(root: Path) -> None:
    now = [1000.0]
    tier = DiskTier(root, 1 << 22, clock=lambda: now[0])
    assert tier.has_many(["a"]) == set()  # nothing there yet (and no directory either)
    stored = {f"k{i}" for i in range(0, 1200, 2)}  # more names than one query takes
    for name in stored:
        assert tier.put(name, b"v")
    assert tier.put("ttl", b"v", expires_at=1010.0)
    names = [f"k{i}" for i in range(1200)] + ["ttl", "../x\x00"]
    assert tier.has_many(names) == stored | {"ttl"}
    now[0] = 1011.0
    assert tier.has_many(names) == stored
    assert all(tier.has(name) for name in stored) and not tier.has("k1")
    tier.close()
    assert tier.has_many(names) == set()


def test_a_get_after_has_many_skips_the_index_and_a_stale_location_falls_back(
        root: Path) -> None:
    writer = DiskTier(root, 64 * KB, segment_bytes=8 * KB)
    assert writer.put_many([(f"n{i}", bytes([i]) * 1000, None) for i in range(6)]) == 6
    reader = DiskTier(root, 64 * KB)
    assert reader.has_many([f"n{i}" for i in range(6)]) == {f"n{i}" for i in range(6)}
    queries = []
    reader._index.reader().set_trace_callback(queries.append)
    assert reader.get("n0") == bytes([0]) * 1000 and not queries  # no index query
    located = reader._located[entry_key("n1")]
    reader._located[entry_key("n1")] = located._replace(offset=located.offset + 1)
    assert reader.get("n1") == bytes([1]) * 1000 and queries  # stale: asked the index
    stats = reader.stats()
    assert (stats["hits"], stats["corrupt"], stats["errors"]) == (2, 0, 0)
    writer.close()
    reader.close()


def test_get_many_reads_a_batch_with_one_index_query(root: Path) -> None:
    """Names has_many located are read without a query, the others looked up in one; misses
    read as None; an entry damaged after it was located takes get()'s path (dropped,
    counted); every hit and miss is counted."""
    now = [1000.0]
    tier = DiskTier(root, 1 << 22, clock=lambda: now[0])
    assert tier.get_many([]) == [] and tier.get_many(["a"]) == [None]  # no directory yet
    for i in range(6):
        assert tier.put(f"n{i}", payload_for(f"n{i}", 2 * KB))
    assert tier.put("ttl", b"t", expires_at=1010.0)
    assert tier.has_many(["n0", "n1", "ttl"]) == {"n0", "n1", "ttl"}
    _damage_payload(root, "n1")
    now[0] = 1011.0
    queries: list[str] = []
    tier._index.reader().set_trace_callback(queries.append)
    names = ["n0", "n1", "n2", "gone", "n3", "ttl"]
    expected = [payload_for("n0", 2 * KB), None, payload_for("n2", 2 * KB), None,
                payload_for("n3", 2 * KB), None]
    assert tier.get_many(names) == expected
    batch_queries = [q for q in queries if " IN (" in q]
    asked = {name for name in names if entry_key(name).hex() in batch_queries[0]}
    assert len(batch_queries) == 1 and asked == {"n2", "gone", "n3"}  # not located before
    stats = tier.stats()
    assert (stats["hits"], stats["corrupt"], stats["expired"]) == (3, 1, 1)
    assert index_row(root, "n1") is None and index_row(root, "ttl") is None
    tier.close()
    assert tier.get_many(names) == [None] * len(names)


def test_get_many_counts_an_index_error_and_reads_nothing(root: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    tier = DiskTier(root, 1 << 20)
    assert tier.put("a", b"a")

    def locked(keys: list[bytes], now: float) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(tier._index, "locate_many", locked)
    assert tier.get_many(["a", "b"]) == [None, None]
    assert tier.stats()["errors"] == 1 and tier.enabled and tier.get("a") == b"a"


def test_put_many_files_a_burst_in_one_go_and_skips_what_cannot_be_stored(root: Path) -> None:
    now = [1000.0]
    tier = DiskTier(root, 64 * KB, clock=lambda: now[0])
    burst = [(f"b{i}", bytes([i]) * 100, None) for i in range(20)]
    burst += [("stale", b"x", 999.0), ("huge", bytes(65 * KB), None), ("ttl", b"t", 1001.0)]
    assert tier.put_many(burst) == 21
    assert all(tier.get(f"b{i}") == bytes([i]) * 100 for i in range(20))
    assert tier.get("ttl") == b"t" and tier.get("stale") is None and tier.get("huge") is None
    stats = tier.stats()
    assert (stats["writes"], stats["rejected"], stats["bytes_written"]) == (21, 1, 2001)
    assert tier.put_many([]) == 0
    tier.close()


def test_a_burst_is_appended_with_a_write_per_run_of_adjacent_entries(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries that follow each other in the room granted go out in one write; a burst that
    needs more room (chunks of 64 KB here) or a new segment takes one write per run, and
    every entry reads back."""
    writes: list[int] = []
    real = disk_writer.write_all

    def counting(fd: int, parts: Any, offset: int) -> None:
        writes.append(len(parts) // 2)
        real(fd, parts, offset)

    monkeypatch.setattr(disk_writer, "write_all", counting)
    tier = DiskTier(root, 4 << 20, segment_bytes=256 * KB)
    small = [(f"s{i}", payload_for(f"s{i}", 1 * KB), None) for i in range(40)]
    assert tier.put_many(small) == 40 and writes == [40]
    writes.clear()
    big = [(f"b{i}", payload_for(f"b{i}", 20 * KB), None) for i in range(30)]  # 600 KB
    assert tier.put_many(big) == 30
    assert sum(writes) == 30 and 3 <= len(writes) < 30
    assert all(tier.get(name) == data for name, data, _ in small + big)
    tier.close()


def test_entries_whose_segment_was_evicted_before_filing_are_stored_again(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process may evict the segment a burst was appended to before the burst is
    filed: those entries are not filed there (the segment is gone), but stored once more in
    a new segment, and every entry reads back."""
    from seaweed_data.core.cache.disk_index import PackIndex

    real = PackIndex.insert_many
    evicted: list[int] = []

    def evicting_first(index: PackIndex, rows: Any) -> list[bool]:
        if not evicted:  # the first burst: its segment goes before it is filed
            evicted.append(rows[0][1].segment)
            index.writer().execute("DELETE FROM segments WHERE id = ?", (evicted[0],))
        return real(index, rows)

    monkeypatch.setattr(PackIndex, "insert_many", evicting_first)
    tier = DiskTier(root, 4 << 20)
    burst = [(f"e{i}", payload_for(f"e{i}", 1 * KB), None) for i in range(10)]
    assert tier.put_many(burst) == 10
    monkeypatch.setattr(PackIndex, "insert_many", real)
    assert all(tier.get(name) == data for name, data, _ in burst)
    index = tier._index
    segments = {index.lookup(entry_key(name)).segment for name, _, _ in burst}
    assert evicted and evicted[0] not in segments
    tier.close()


def test_expired_entries_are_dropped_on_read(root: Path) -> None:
    now = [1000.0]
    tier = DiskTier(root, 1 << 20, clock=lambda: now[0])
    assert tier.put("ttl", b"v", expires_at=1010.0)
    assert tier.put("forever", b"w")
    assert not tier.put("stale", b"x", expires_at=999.0)
    assert not tier.put("nan", b"x", expires_at=float("nan"))
    assert tier.get("ttl") == b"v" and "ttl" in tier
    now[0] = 1010.0
    assert "ttl" not in tier
    assert tier.get("ttl") is None and tier.get("forever") == b"w"
    assert tier.stats()["expired"] == 1 and index_row(root, "ttl") is None


def _garbage_over_the_index(root: Path, *, with_wal: bool = True) -> None:
    size = (root / "index.db").stat().st_size
    (root / "index.db").write_bytes(random.Random(1).randbytes(max(size, 4096)))
    for suffix in ("-wal", "-shm") if with_wal else ():
        (root / f"index.db{suffix}").unlink(missing_ok=True)


def test_a_damaged_index_is_replaced_by_an_empty_one(root: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    tier = DiskTier(root, 1 << 20)
    for i in range(20):
        assert tier.put(str(i), payload_for(str(i), 3 * KB))
    tier.close()
    _garbage_over_the_index(root)
    with caplog.at_level(logging.WARNING):
        later = DiskTier(root, 1 << 20)
        assert later.get("3") is None  # the old entries are gone, with their pack files
        assert later.put("new", b"n") and later.get("new") == b"n"
    assert len(caplog.records) == 1 and "the index is damaged" in caplog.text
    assert len(pack_files(root)) == 1 and later.used_bytes() >= pack_total(root)
    with contextlib.closing(connect(root)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_damaged_page_found_by_a_lookup_replaces_the_index(
        root: Path, caplog: pytest.LogCaptureFixture) -> None:
    tier = DiskTier(root, 1 << 20)
    for i in range(200):
        assert tier.put(str(i), payload_for(str(i), 100))
    tier.close()
    with contextlib.closing(connect(root)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(root / "index.db", "r+b") as f:  # the header and schema page stay whole
        f.seek(4096)
        f.write(random.Random(2).randbytes((root / "index.db").stat().st_size - 4096))
    later = DiskTier(root, 1 << 20)
    with caplog.at_level(logging.WARNING):
        assert all(later.get(str(i)) in (None, payload_for(str(i), 100)) for i in range(200))
    assert "the index is damaged" in caplog.text and later.stats()["errors"] >= 1
    assert later.put("new", b"n") and later.get("new") == b"n"
    with contextlib.closing(connect(root)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_an_index_damaged_under_running_tiers_is_replaced_once(root: Path) -> None:
    first, second = DiskTier(root, 1 << 20), DiskTier(root, 1 << 20)
    for i in range(30):
        assert first.put(str(i), payload_for(str(i), 3 * KB))
    assert second.get("1") == payload_for("1", 3 * KB)
    with contextlib.closing(connect(root)) as db:  # every page in the file, none in the WAL
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _garbage_over_the_index(root, with_wal=False)
    third = DiskTier(root, 1 << 20)  # finds the index damaged and replaces it
    assert third.get("1") is None
    time.sleep(1.1)  # readers look for a replaced index once a second
    for tier in (first, second, third):
        for i in range(30):  # whatever is served is exact
            got = tier.get(str(i))
            assert got is None or got == payload_for(str(i), 3 * KB)
        assert tier.put(f"after-{id(tier)}", b"a")
    for tier in (first, second, third):
        assert all(tier.get(f"after-{id(t)}") == b"a" for t in (first, second, third))
    names = [f"after-{id(t)}" for t in (first, second, third)]
    time.sleep(1.1)
    for tier in (first, second, third):  # batches look for a replaced index too
        assert tier.get_many(names) == [b"a"] * 3
    with consistent_view(root) as view:
        assert view.unknown_files == 0 and view.on_disk <= view.allocated <= 1 << 20


def test_an_index_of_an_unknown_schema_version_is_replaced(root: Path) -> None:
    assert DiskTier(root, 1 << 20).put("k", b"v")
    with contextlib.closing(connect(root)) as db:
        db.execute("PRAGMA user_version = 99")
    later = DiskTier(root, 1 << 20)
    assert later.get("k") is None and later.put("k", b"w") and later.get("k") == b"w"


# -- budget and eviction --------------------------------------------------------------------


def test_oldest_segments_are_evicted_first(root: Path) -> None:
    entry = HEADER_SIZE + 1000
    tier = DiskTier(root, 10 * entry, segment_bytes=2 * entry)
    for i in range(10):
        assert tier.put(str(i), payload_for(str(i), 1000))
    for i in range(10, 13):
        assert tier.put(str(i), payload_for(str(i), 1000))
    present = [i for i in range(13) if str(i) in tier]
    assert present == list(range(present[0], 13)) and present[0] in (3, 4)
    assert tier.stats()["evictions"] == present[0]
    assert all(tier.get(str(i)) == payload_for(str(i), 1000) for i in present)
    with consistent_view(root) as view:
        assert view.on_disk <= view.allocated <= 10 * entry


def test_threads_share_the_budget(root: Path) -> None:
    capacity = 64 * KB
    tier = DiskTier(root, capacity)
    wrong = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            key = str(rng.randrange(100))
            got = tier.get(key)
            if got is not None and got != payload_for(key, 1 + int(key) * 20):
                wrong.append(key)
            if got is None:
                tier.put(key, payload_for(key, 1 + int(key) * 20))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    stats = tier.stats()
    assert stats["corrupt"] == stats["errors"] == 0 and stats["hits"] > 100
    with consistent_view(root) as view:
        assert view.on_disk <= view.allocated <= capacity


def _writer(root: str, capacity: int, seed: int, count: int, go: Any) -> None:
    tier = DiskTier(root, capacity)
    go.wait()
    rng = random.Random(seed)
    for i in range(count):
        key = f"{seed}-{i}"
        tier.put(key, payload_for(key, rng.randrange(1, 8 * KB)))
    if tier.stats()["errors"]:
        raise SystemExit(3)


def test_budget_holds_with_processes_writing_at_once(root: Path) -> None:
    capacity = 256 * KB
    ctx = multiprocessing.get_context("fork")
    DiskTier(root, capacity).used_bytes()  # creates the directory
    go = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(root), capacity, s, 3000, go))
             for s in (1, 2, 3)]
    for p in procs:
        p.start()
    go.set()
    views = []
    while any(p.is_alive() for p in procs):
        with consistent_view(root) as view:
            views.append(view)
        time.sleep(0.002)
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(views) > 5
    assert max(v.on_disk for v in views) <= capacity
    assert all(v.allocated <= capacity and not v.over_allocation for v in views)
    tier = DiskTier(root, capacity)  # the writers exited: their segments are sealed
    assert tier.used_bytes() == pack_total(root) <= capacity
    assert all(not is_open for _, _, is_open in segments(root)), segments(root)
    survivors = [f"{s}-{i}" for s in (1, 2, 3) for i in range(3000)
                 if index_row(root, f"{s}-{i}") is not None]
    assert len(survivors) > 30
    assert all(len(tier.get(k) or b"") > 0 for k in survivors)


def test_a_live_writers_segment_is_evicted_only_as_a_last_resort(root: Path) -> None:
    capacity = 40 * KB
    holder = DiskTier(root, capacity, segment_bytes=40 * KB)
    assert holder.put("held", bytes(5 * KB))  # its open segment holds the whole budget
    other = DiskTier(root, capacity, segment_bytes=40 * KB)
    assert other.put("new", bytes(5 * KB))  # evicts the live segment: nothing else to take
    assert other.stats()["evictions"] == 1 and "held" not in other
    assert holder.put("again", b"a")  # its segment is gone: a new one, the entry is kept
    assert holder.get("again") == b"a" and other.get("again") == b"a"
    with consistent_view(root) as view:
        assert view.on_disk <= view.allocated <= capacity and view.unknown_files == 0


def test_a_sealed_segment_goes_before_a_live_one(root: Path) -> None:
    capacity = 40 * KB
    tier = DiskTier(root, capacity, segment_bytes=10 * KB)
    live = DiskTier(root, capacity, segment_bytes=10 * KB)
    assert live.put("live", bytes(3 * KB))
    for i in range(30):
        assert tier.put(str(i), bytes(3 * KB))
    assert live.get("live") == bytes(3 * KB)
    assert live.put("live-2", bytes(3 * KB)) and live.get("live-2") == bytes(3 * KB)


def _write_and_vanish(root: str, capacity: int) -> None:
    tier = DiskTier(root, capacity, segment_bytes=8 * KB)
    for i in range(2):
        tier.put(f"dead-{i}", bytes(3 * KB))
    os._exit(0)  # no close(), no finalizers: its segment stays open, its flock goes


def test_a_dead_writers_open_segment_is_evicted_in_its_turn(root: Path) -> None:
    capacity = 32 * KB
    tier = DiskTier(root, capacity, segment_bytes=8 * KB)
    tier.used_bytes()  # prepared before the writer dies: nobody sealed its segment yet
    proc = multiprocessing.get_context("fork").Process(target=_write_and_vanish,
                                                       args=(str(root), capacity))
    proc.start()
    proc.join(30)
    assert [is_open for _, _, is_open in segments(root)] == [1]
    for i in range(12):
        assert tier.put(f"live-{i}", bytes(3 * KB))
    assert "dead-0" not in tier and "dead-1" not in tier  # the oldest went first
    assert "live-11" in tier and tier.stats()["evictions"] >= 2
    with consistent_view(root) as view:
        assert view.on_disk <= view.allocated <= capacity


# -- several processes on the same keys -----------------------------------------------------


def _reader(root: str, keys: list[str], go: Any, rounds: int) -> None:
    tier = DiskTier(root, 1 << 22)
    go.wait()
    for _ in range(rounds):
        for key in keys:
            got = tier.get(key)
            if got is None:
                tier.put(key, payload_for(key, 16 * KB))
            elif got != payload_for(key, 16 * KB):
                raise SystemExit(2)
    stats = tier.stats()
    if stats["corrupt"] or stats["errors"]:
        raise SystemExit(3)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes_reading_the_same_keys_share_them(root: Path, method: str) -> None:
    ctx: Any = multiprocessing.get_context(method)
    keys = [f"key-{i}" for i in range(40)]
    go = ctx.Event()
    procs = [ctx.Process(target=_reader, args=(str(root), keys, go, 5)) for _ in range(3)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    tier = DiskTier(root, 1 << 22)
    for key in keys:
        row = index_row(root, key)
        assert row is not None
        with open(row.path, "rb") as f:
            f.seek(row.offset)
            raw = f.read(row.length)
        assert decode_entry(raw, entry_key(key)) == (payload_for(key, 16 * KB), None)
    # each key stored once or a few times (two processes missing it at once), never more
    assert pack_total(root) <= 3 * len(keys) * (HEADER_SIZE + 16 * KB)
    assert tier.used_bytes() == pack_total(root)


WRITER = """
import random, sys
sys.path.insert(0, sys.argv[3])
from disk_files import payload_for
from seaweed_data.core.cache.disk import DiskTier

tier = DiskTier(sys.argv[1], int(sys.argv[2]))
rng = random.Random()
while True:
    key = f"key-{rng.randrange(60)}"
    tier.put(key, payload_for(key, 1000 + 997 * int(key[4:])))
"""


def _checking_reader(root: str, stop: Any, results: Any) -> None:
    tier = DiskTier(root, 2 << 20)
    wrong = hits = 0
    while not stop.is_set():
        for n in range(60):
            key = f"key-{n}"
            got = tier.get(key)
            if got is not None:
                hits += 1
                wrong += got != payload_for(key, 1000 + 997 * n)
    stats = tier.stats()
    results.put((wrong, hits, stats["corrupt"]))


def test_writers_killed_at_random_moments_never_show_a_reader_wrong_bytes(root: Path) -> None:
    """A writer process is SIGKILLed at random moments (mid-append, mid-reservation, mid-index
    update), eight times, while another process reads and checks every hit."""
    capacity = 2 << 20
    DiskTier(root, capacity).used_bytes()
    ctx: Any = multiprocessing.get_context("fork")
    stop, results = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_checking_reader, args=(str(root), stop, results))
    reader.start()
    rng = random.Random(7)
    tests_dir = str(Path(__file__).parent)
    try:
        for _ in range(8):
            before = pack_total(root)
            writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(capacity),
                                       tests_dir])
            deadline = time.monotonic() + 60
            while pack_total(root) == before and time.monotonic() < deadline:  # until it writes
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.3))
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            with consistent_view(root) as view:
                assert view.on_disk <= view.allocated <= capacity
    finally:
        stop.set()
        wrong, hits, corrupt = results.get(timeout=60)
        reader.join(30)
    assert wrong == 0 and corrupt == 0 and hits > 100
    later = DiskTier(root, capacity)
    later.used_bytes()  # first use: reclaims, sealing the dead writers' segments
    assert all(not is_open for _, _, is_open in segments(root))
    assert later.used_bytes() == pack_total(root) <= capacity
    for n in range(60):
        got = later.get(f"key-{n}")
        assert got is None or got == payload_for(f"key-{n}", 1000 + 997 * n)
    assert later.put("after", b"x") and later.get("after") == b"x"


def _stuck_writer(root: str, halfway: Any) -> None:
    def write_half_then_hang(fd: int, parts: Any, offset: int) -> None:
        data = b"".join(bytes(p) for p in parts)
        os.pwrite(fd, data[: len(data) // 2], offset)
        halfway.set()
        time.sleep(60)

    disk_writer.write_all = write_half_then_hang
    DiskTier(root, 1 << 20).put("victim", payload_for("victim", 16 * KB))


def test_entry_of_a_killed_writer_is_never_served_and_its_segment_is_reclaimed(
        root: Path) -> None:
    tier = DiskTier(root, 1 << 20)
    assert tier.put("bystander", b"b")
    ctx = multiprocessing.get_context("fork")
    halfway = ctx.Event()
    proc = ctx.Process(target=_stuck_writer, args=(str(root), halfway))
    proc.start()
    assert halfway.wait(30)
    assert tier.get("victim") is None and "victim" not in tier
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert tier.get("victim") is None
    assert sum(is_open for _, _, is_open in segments(root)) == 2  # ours and the dead one's
    later = DiskTier(root, 1 << 20)  # e.g. the next job on the node
    assert later.put("next", b"n")
    tier.close()
    assert later.used_bytes() == pack_total(root) + later._writer.segment.allocated \
        - later._writer.segment.offset  # type: ignore[union-attr]


# -- fork safety ----------------------------------------------------------------------------


def _use_in_child(tier: DiskTier, done: Any) -> None:
    inherited = {p for p in open_paths() if Path(tier.directory) in p.parents}
    ok = tier.put("from-child", b"c") and tier.get("from-parent") == b"p"
    done.put((ok, sorted(map(str, inherited)), tier.stats()["writes"]))


def test_a_forked_child_starts_afresh(root: Path) -> None:
    tier = DiskTier(root, 1 << 20)
    assert tier.put("from-parent", b"p")
    ctx = multiprocessing.get_context("fork")
    done = ctx.Queue()
    proc = ctx.Process(target=_use_in_child, args=(tier, done))
    proc.start()
    ok, inherited, child_writes = done.get(timeout=30)
    proc.join(30)
    assert proc.exitcode == 0 and ok
    assert inherited == []  # neither the parent's segment nor its index connections
    assert child_writes == 1  # counters start afresh in the child
    assert tier.get("from-child") == b"c" and tier.stats()["writes"] == 1
    assert tier.put("parent-again", b"q") and tier.get("parent-again") == b"q"
    assert len(pack_files(root)) == 2  # the child wrote a segment of its own


def test_a_dropped_tier_lets_go_at_once(root: Path) -> None:
    """Its SQLite connections sit in reference cycles: left to the cyclic GC, one could still
    be open at a fork, and a child inheriting SQLite's lock bookkeeping breaks the locking of
    the whole directory."""
    gc.disable()
    try:
        tier = DiskTier(root, 1 << 20)
        assert tier.put("k", b"v") and tier.get("k") == b"v"
        del tier
        assert not [p for p in open_paths() if root in p.parents]
        assert [is_open for _, _, is_open in segments(root)] == [0]  # sealed on the way out
    finally:
        gc.enable()


def test_fork_waits_for_a_put_in_another_thread(root: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    tier = DiskTier(root, 1 << 20)
    assert tier.put("from-parent", b"p")
    inside, release = threading.Event(), threading.Event()
    real = disk_writer.write_all

    def slow_write(fd: int, parts: Any, offset: int) -> None:
        inside.set()
        release.wait(30)
        real(fd, parts, offset)

    monkeypatch.setattr(disk_writer, "write_all", slow_write)
    putter = threading.Thread(target=tier.put, args=("slow", b"s"))
    putter.start()
    assert inside.wait(30)
    threading.Timer(0.3, release.set).start()
    ctx = multiprocessing.get_context("fork")
    done = ctx.Queue()
    started = time.monotonic()
    proc = ctx.Process(target=_use_in_child, args=(tier, done))
    proc.start()  # forks only once the put is done: no lock or connection is inherited busy
    assert time.monotonic() - started >= 0.25
    ok, _, _ = done.get(timeout=30)
    proc.join(30)
    putter.join(30)
    assert ok and proc.exitcode == 0 and tier.get("slow") == b"s"


# -- full disk, read-only directory, removed directory --------------------------------------


def test_enospc_disables_writing_with_one_warning(root: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    tier = DiskTier(root, 1 << 20)
    assert tier.put("old", b"kept")

    def full(fd: int, parts: Any, offset: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk_writer, "write_all", full)
    with caplog.at_level(logging.WARNING, logger=disk.__name__):
        assert not tier.put("new", b"x")
        assert not tier.enabled
        assert not any(tier.put(f"more-{i}", b"x") for i in range(5))
    assert len(caplog.records) == 1 and "No space left" in caplog.text
    assert tier.get("old") == b"kept" and tier.get("new") is None
    assert tier.stats()["errors"] == 1


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=700", "tmpfs",
                              str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@pytest.mark.skipif(not IS_ROOT, reason="mounting a small tmpfs needs root")
def test_real_full_disk_and_read_only_filesystem(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with tiny_tmpfs(tmp_path / "mnt", "512k") as mnt, \
            caplog.at_level(logging.WARNING, logger=disk.__name__):
        tier = DiskTier(mnt / "cache", 10 << 20)  # the budget is larger than the disk
        stored = [i for i in range(20) if tier.put(str(i), payload_for(str(i), 64 * KB))]
        assert 1 <= len(stored) < 8 and not tier.enabled
        assert all(tier.get(str(i)) == payload_for(str(i), 64 * KB) for i in stored)
        assert len(caplog.records) == 1 and "No space left" in caplog.text
        tier.close()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        caplog.clear()
        readonly = DiskTier(mnt / "cache", 10 << 20)
        assert readonly.get(str(stored[0])) == payload_for(str(stored[0]), 64 * KB)
        assert not readonly.put("x", b"x") and not readonly.put("y", b"y")
        assert len(caplog.records) == 1 and "read-only" in caplog.text.lower()
        readonly.close()


def test_directory_removed_under_a_running_tier_is_recreated(root: Path) -> None:
    tier = DiskTier(root, 1 << 20)
    assert tier.put("a", b"a")
    subprocess.run(["rm", "-rf", str(root)], check=True)
    time.sleep(1.1)  # the tier looks for a replaced index once a second
    assert tier.get("a") is None
    assert tier.put("b", b"b") and tier.get("b") == b"b"
    assert pack_total(root) == HEADER_SIZE + 1 and tier.enabled


def test_a_busy_index_is_an_error_not_a_crash(root: Path) -> None:
    tier = DiskTier(root, 1 << 20)
    assert tier.put("a", b"a")
    tier._index.writer().execute("PRAGMA busy_timeout = 50")
    with contextlib.closing(connect(root)) as other:
        other.execute("BEGIN EXCLUSIVE")
        assert not tier.put("b", bytes(200 * KB))  # needs a reservation: the index is locked
        other.execute("ROLLBACK")
    assert tier.stats()["errors"] == 1 and tier.enabled
    assert tier.put("b", b"b") and tier.get("a") == b"a"


# -- the entry format -----------------------------------------------------------------------

expiries = st.none() | st.floats(min_value=0.0, max_value=4e9, allow_nan=False)
algorithms = st.sampled_from(sorted(CHECKSUMS))
keys = st.binary(max_size=24)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), expiries, algorithms, keys)
def test_format_roundtrip(payload: bytes, expires_at: float | None, algorithm: int,
                          key: bytes) -> None:
    raw = encode_entry(payload, expires_at, algorithm=algorithm, key=key)
    assert len(raw) == HEADER_SIZE + len(payload)
    assert raw[5] == algorithm
    assert decode_entry(raw, key) == (payload, expires_at)


def test_an_entry_read_under_another_key_fails() -> None:
    raw = encode_entry(b"payload", key=b"k1")
    with pytest.raises(EntryFormatError, match="checksum"):
        decode_entry(raw, b"k2")
    assert decode_entry(encode_entry(b"x")) == (b"x", None)  # no key: as before


def test_entries_of_any_known_checksum_are_read_and_unknown_ones_rejected() -> None:
    assert decode_entry(encode_entry(b"old", algorithm=1)) == (b"old", None)
    raw = bytearray(encode_entry(b"x"))
    raw[5] = 200
    with pytest.raises(EntryFormatError, match="format version"):
        decode_entry(bytes(raw))


def test_crc32c_when_installed() -> None:
    pytest.importorskip("crc32c")
    assert CHECKSUM_ID == 2 and checksum(b"123456789", 0, 2) == 0xE3069283


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=500), expiries, algorithms, st.data())
def test_format_detects_any_damage(payload: bytes, expires_at: float | None, algorithm: int,
                                   data: st.DataObject) -> None:
    raw = bytearray(encode_entry(payload, expires_at, algorithm=algorithm, key=b"key"))
    kind = data.draw(st.sampled_from(["flip", "bytes", "truncate", "extend"]))
    if kind == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] ^= data.draw(st.integers(1, 255))
    elif kind == "bytes":
        at = data.draw(st.integers(0, len(raw) - 1))
        new = data.draw(st.binary(min_size=1, max_size=4))
        raw[at:at + len(new)] = new
    elif kind == "truncate":
        del raw[data.draw(st.integers(0, len(raw) - 1)):]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=8))
    try:
        decoded = decode_entry(bytes(raw), b"key")
    except EntryFormatError:
        return
    assert decoded == (payload, expires_at)  # only a no-op overwrite may decode


def test_sqlite_errors_are_classified() -> None:
    from seaweed_data.core.cache.disk_index import IndexDamaged, error_kind

    def coded(code: int) -> sqlite3.Error:
        exc = sqlite3.OperationalError("x")
        exc.sqlite_errorcode = code  # type: ignore[attr-defined]
        return exc

    assert [error_kind(coded(c)) for c in (11, 26, 13, 8, 14, 5)] == [
        "corrupt", "corrupt", "full", "readonly", "readonly", "other"]
    assert error_kind(IndexDamaged("v")) == "corrupt"
