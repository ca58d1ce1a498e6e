"""The disk tier: format, safety, budget across processes, faults and fork safety.

Real processes (fork and spawn) share one directory where the issue asks for it; faults that no
ordinary machine produces on demand (ENOSPC) are injected at the one low-level write function,
and also produced for real on a tiny tmpfs when the tests run as root.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import multiprocessing
import os
import random
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seaweed_data.core.cache import disk
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
from seaweed_data.core.cache.disk_layout import entry_digest

KB = 1024
IS_ROOT = os.geteuid() == 0


def payload_for(key: str, size: int = 4 * KB) -> bytes:
    """Deterministic bytes for ``key`` (so any process can check what it read)."""
    seed = random.Random(key)
    return seed.randbytes(size)


def entry_files(root: Path) -> list[Path]:
    """The entry files (not the ledger, not temp files)."""
    return sorted(p for p in root.glob("??/*") if p.is_file())


def dir_total(root: Path) -> int:
    """Bytes of every entry and temp file."""
    temps = [p for p in (root / "tmp").iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in [*entry_files(root), *temps])


def open_files() -> set[Path]:
    """What this process has open (Linux), to check that nothing leaks."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc")
    found = set()
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            found.add(Path(os.readlink(fd)))
    return found


@contextlib.contextmanager
def ledger_locked(root: Path) -> Iterator[None]:
    """Hold the directory's ledger lock (a consistent view of entries and reservations)."""
    fd = os.open(root / "ledger", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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
    assert "a" in tier and "zz" not in tier and 3 not in tier
    tier.remove("b")
    tier.remove("never-there")
    assert tier.get("b") is None and "b" not in tier
    stats = tier.stats()
    assert (stats["hits"], stats["misses"], stats["writes"]) == (2, 2, 2)
    assert stats["bytes"] == HEADER_SIZE + len(data) == dir_total(root)
    assert stats["bytes_read"] == len(data) + 100
    assert root / "ledger" in open_files()
    tier.close()
    assert tier.get("a") is None and not tier.put("c", b"x") and not tier.enabled
    assert root / "ledger" not in open_files()
    tier.close()


def test_overwrite_keeps_one_entry_and_exact_accounting(root: Path) -> None:
    tier = DiskTier(root, 1 << 20)
    for size in (10, 5000, 300):
        assert tier.put("k", payload_for("k", size))
    assert tier.get("k") == payload_for("k", 300)
    assert len(entry_files(root)) == 1
    assert tier.used_bytes() == dir_total(root) == HEADER_SIZE + 300


def test_entry_larger_than_capacity_is_rejected(root: Path) -> None:
    tier = DiskTier(root, 1000)
    assert not tier.put("big", bytes(1000))
    assert tier.put("fits", bytes(1000 - HEADER_SIZE))
    assert tier.stats()["rejected"] == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="capacity_bytes"):
        DiskTier("/nonexistent", -1)
    with pytest.raises(ValueError, match="evict_fraction"):
        DiskTier("/nonexistent", 10, evict_fraction=1.0)


@pytest.mark.parametrize("name", [
    "../../../etc/passwd", "/etc/passwd", "a/b/../../..", "..", ".", "", "nul\0byte",
    "x" * 10240, "\udc80 lone surrogate", "ab", "tmp", "ledger",
])
def test_names_stay_inside_the_directory(tmp_path: Path, name: str) -> None:
    root = tmp_path / "cache"
    tier = DiskTier(root, 1 << 20)
    assert tier.put(name, b"payload of " + name.encode("utf-8", "surrogatepass"))
    assert tier.get(name) == b"payload of " + name.encode("utf-8", "surrogatepass")
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]
    [entry] = entry_files(root)
    digest = entry_digest(name)
    assert entry == root / digest[:2] / digest and len(digest) == 40
    assert sorted(p.name for p in root.iterdir()) == sorted(["ledger", "tmp", digest[:2]])


def test_partial_writes_are_completed(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_writev = os.writev

    def dribble(fd: int, buffers: list[memoryview]) -> int:  # at most 1000 bytes per call
        return real_writev(fd, [bytes(buffers[0][:1000])])

    tier = DiskTier(root, 1 << 20)
    monkeypatch.setattr(os, "writev", dribble)
    data = payload_for("k", 5555)
    assert tier.put("k", data)
    monkeypatch.undo()
    assert tier.get("k") == data


def test_short_reads_are_completed_and_eof_is_truncation() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"ab")
        threading.Timer(0.05, os.write, (w, b"cd")).start()
        assert disk._read_exact(r, 4) == b"abcd"
        os.write(w, b"xy")
        os.close(w)
        with pytest.raises(EntryFormatError, match="truncated"):
            disk._read_exact(r, 3)
    finally:
        os.close(r)


# -- permissions ----------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o277])
def test_private_modes_whatever_the_umask(root: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        tier = DiskTier(root / "nested", 1 << 20)
        assert tier.put("k", b"secret")
    finally:
        os.umask(old)
    base = root / "nested"
    [entry] = entry_files(base)
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (base, base / "tmp", entry.parent)}
    assert set(modes.values()) == {0o700}, modes
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE((base / "ledger").stat().st_mode) == 0o600


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


# -- damaged entries and expiry -------------------------------------------------------------


def _damage_flip_payload(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + 7] ^= 0x01
    path.write_bytes(bytes(raw))


def _damage_flip_header(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[17] ^= 0x80  # inside expires_at
    path.write_bytes(bytes(raw))


def _damage_truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 1)


def _damage_truncate_header(path: Path) -> None:
    os.truncate(path, 10)


def _damage_append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"x")


@pytest.mark.parametrize("damage", [_damage_flip_payload, _damage_flip_header, _damage_truncate,
                                    _damage_truncate_header, _damage_append])
def test_damaged_entry_is_deleted_and_refetched(root: Path, damage: object) -> None:
    tier = DiskTier(root, 1 << 20)
    data = payload_for("k", 16 * KB)
    assert tier.put("k", data) and tier.put("other", b"o")
    [path] = [p for p in entry_files(root) if p.name == entry_digest("k")]
    damage(path)  # type: ignore[operator]
    assert tier.get("k") is None
    assert not path.exists()
    assert tier.stats()["corrupt"] == 1
    assert tier.used_bytes() == dir_total(root) == HEADER_SIZE + 1
    assert tier.put("k", data) and tier.get("k") == data  # the caller's refetch


def test_expired_entries_are_deleted_on_read(root: Path) -> None:
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
    assert tier.stats()["expired"] == 1
    assert len(entry_files(root)) == 1 and tier.used_bytes() == dir_total(root)


def test_damaged_ledger_is_recounted(root: Path) -> None:
    tier = DiskTier(root, 1 << 20)
    for i in range(5):
        tier.put(str(i), bytes(100))
    (root / "ledger").write_bytes(b"garbage")
    assert tier.used_bytes() == dir_total(root) == 5 * (HEADER_SIZE + 100)
    assert tier.put("5", bytes(100)) and tier.used_bytes() == dir_total(root)


# -- budget and eviction --------------------------------------------------------------------


def test_least_recently_used_entries_are_evicted_first(root: Path) -> None:
    entry = HEADER_SIZE + 1000
    tier = DiskTier(root, 10 * entry, evict_fraction=0.0)
    for i in range(10):
        assert tier.put(str(i), payload_for(str(i), 1000))
    for i, path in enumerate(sorted(entry_files(root))):  # all last used long ago, in order
        os.utime(path, ns=(10**9 * (1000 + i),) * 2)
    assert tier.get("0") is not None and tier.get("1") is not None  # a hit refreshes them
    for i in range(10, 13):
        assert tier.put(str(i), payload_for(str(i), 1000))
    assert tier.stats()["evictions"] == 3
    present = {k for k in map(str, range(13)) if k in tier}
    assert {"0", "1", "10", "11", "12"} <= present and len(present) == 10
    assert dir_total(root) == tier.used_bytes() <= 10 * entry


def test_threads_share_the_budget(root: Path) -> None:
    capacity = 64 * KB
    tier = DiskTier(root, capacity)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            key = str(rng.randrange(100))
            got = tier.get(key)
            assert got is None or got == payload_for(key, 1 + int(key) * 20)
            if got is None:
                tier.put(key, payload_for(key, 1 + int(key) * 20))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tier.stats()["corrupt"] == 0 and tier.stats()["errors"] == 0
    assert dir_total(root) == tier.used_bytes() <= capacity


def _writer(root: str, capacity: int, seed: int, count: int, go: object) -> None:
    tier = DiskTier(root, capacity)
    go.wait()  # type: ignore[attr-defined]
    rng = random.Random(seed)
    for i in range(count):
        tier.put(f"{seed}-{i}", rng.randbytes(rng.randrange(1, 8 * KB)))
    if tier.stats()["errors"]:
        raise SystemExit(3)


def test_budget_holds_with_two_processes_writing(root: Path) -> None:
    capacity = 256 * KB
    ctx = multiprocessing.get_context("fork")
    DiskTier(root, capacity).used_bytes()  # creates the directory
    go = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(root), capacity, s, 400, go))
             for s in (1, 2)]
    for p in procs:
        p.start()
    go.set()
    samples = []
    while any(p.is_alive() for p in procs):
        with ledger_locked(root):
            samples.append(dir_total(root))
        time.sleep(0.002)
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(samples) > 5 and max(samples) <= capacity
    tier = DiskTier(root, capacity)
    assert dir_total(root) == tier.used_bytes() <= capacity
    assert len(entry_files(root)) > 30 and not list((root / "tmp").iterdir())


def test_bytes_reserved_by_writes_in_flight_are_not_given_away(root: Path) -> None:
    tier = DiskTier(root, 10 * KB)
    assert tier.put("old", bytes(3 * KB))
    other = DiskTier(root, 10 * KB)._ledger.reserve(8 * KB)  # another writer, mid-write
    assert other is not None and other.evicted == 1
    assert not tier.put("new", bytes(3 * KB))  # nothing evictable is left
    assert tier.stats()["rejected"] == 1
    os.close(other.fd)
    assert tier.used_bytes() == 8 * KB and dir_total(root) == 0


def test_a_write_whose_temp_file_was_swept_is_dropped(root: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    tier = DiskTier(root, 1 << 20)
    real_write_all = disk._write_all

    def write_after_a_sweep(fd: int, parts: list[bytes | memoryview]) -> None:
        for temp in (root / "tmp").iterdir():  # as another process does when it looks stale
            temp.unlink()
        real_write_all(fd, parts)

    monkeypatch.setattr(disk, "_write_all", write_after_a_sweep)
    assert not tier.put("k", b"data")
    assert tier.get("k") is None and tier.stats()["errors"] == 1 and tier.enabled


# -- several processes on the same keys -----------------------------------------------------


def _reader(root: str, keys: list[str], go: object, rounds: int) -> None:
    tier = DiskTier(root, 1 << 22)
    go.wait()  # type: ignore[attr-defined]
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
def test_two_processes_reading_the_same_keys_leave_one_entry(root: Path, method: str) -> None:
    ctx: Any = multiprocessing.get_context(method)
    keys = [f"key-{i}" for i in range(40)]
    go = ctx.Event()
    procs = [ctx.Process(target=_reader, args=(str(root), keys, go, 5)) for _ in range(2)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    tier = DiskTier(root, 1 << 22)
    assert len(entry_files(root)) == len(keys) and not list((root / "tmp").iterdir())
    for key in keys:
        [path] = [p for p in entry_files(root) if p.name == entry_digest(key)]
        assert decode_entry(path.read_bytes()) == (payload_for(key, 16 * KB), None)
    assert tier.used_bytes() == dir_total(root) == len(keys) * (HEADER_SIZE + 16 * KB)


def _stuck_writer(root: str, halfway: object) -> None:
    def write_half_then_hang(fd: int, parts: object) -> None:
        data = b"".join(bytes(p) for p in parts)  # type: ignore[attr-defined]
        os.write(fd, data[: len(data) // 2])
        halfway.set()  # type: ignore[attr-defined]
        time.sleep(60)

    disk._write_all = write_half_then_hang
    DiskTier(root, 1 << 20).put("victim", payload_for("victim", 16 * KB))


def test_entry_of_a_killed_writer_is_never_served_and_is_cleaned(root: Path) -> None:
    tier = DiskTier(root, 1 << 20)
    assert tier.put("bystander", b"b")
    ctx = multiprocessing.get_context("fork")
    halfway = ctx.Event()
    proc = ctx.Process(target=_stuck_writer, args=(str(root), halfway))
    proc.start()
    assert halfway.wait(30)
    [temp] = list((root / "tmp").iterdir())
    assert 0 < temp.stat().st_size < HEADER_SIZE + 16 * KB
    assert tier.get("victim") is None and "victim" not in tier
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert tier.get("victim") is None
    later = DiskTier(root, 1 << 20)  # e.g. the next job on the node
    assert later.put("next", b"n")
    assert not list((root / "tmp").iterdir())
    assert later.used_bytes() == dir_total(root) == 2 * HEADER_SIZE + 2


def test_old_temp_files_are_cleaned_even_from_live_processes(root: Path) -> None:
    tier = DiskTier(root, 1 << 20, stale_tmp_seconds=60)
    assert tier.put("a", b"a")
    stale = root / "tmp" / f"otherhost-{os.getppid()}-abc-100.tmp"
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 120,) * 2)
    fresh = root / "tmp" / f"otherhost-{os.getppid()}-def-100.tmp"
    fresh.write_bytes(b"partial")
    assert DiskTier(root, 1 << 20, stale_tmp_seconds=60).put("b", b"b")
    assert sorted(p.name for p in (root / "tmp").iterdir()) == [fresh.name]


# -- fork safety ----------------------------------------------------------------------------


def _put_in_child(tier: DiskTier, done: object) -> None:
    ok = tier.put("from-child", b"c") and tier.get("from-parent") == b"p"
    done.put((ok, time.monotonic(), tier.stats()["writes"]))  # type: ignore[attr-defined]


def test_fork_while_the_parent_holds_the_ledger_lock(root: Path) -> None:
    tier = DiskTier(root, 1 << 20)
    assert tier.put("from-parent", b"p")
    ctx = multiprocessing.get_context("fork")
    done = ctx.Queue()
    with tier._ledger._locked():  # a thread of the parent is inside the ledger at fork time
        proc = ctx.Process(target=_put_in_child, args=(tier, done))
        proc.start()
        time.sleep(0.3)
        released = time.monotonic()
    ok, finished, child_writes = done.get(timeout=30)
    proc.join(30)
    assert proc.exitcode == 0 and ok
    assert finished >= released  # the child waited for the parent's flock: not shared
    assert child_writes == 1  # counters start afresh in the child
    assert tier.get("from-child") == b"c" and tier.stats()["writes"] == 1


# -- full disk and read-only directory ------------------------------------------------------


def test_enospc_disables_writing_with_one_warning(root: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    tier = DiskTier(root, 1 << 20)
    assert tier.put("old", b"kept")

    def full(fd: int, parts: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk, "_write_all", full)
    with caplog.at_level(logging.WARNING, logger=disk.__name__):
        assert not tier.put("new", b"x")
        assert not tier.enabled
        assert not any(tier.put(f"more-{i}", b"x") for i in range(5))
    assert len(caplog.records) == 1 and "No space left" in caplog.text
    assert tier.get("old") == b"kept" and tier.get("new") is None
    assert not list((root / "tmp").iterdir())
    assert tier.used_bytes() == dir_total(root) == HEADER_SIZE + 4


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
    with tiny_tmpfs(tmp_path / "mnt", "256k") as mnt, \
            caplog.at_level(logging.WARNING, logger=disk.__name__):
        tier = DiskTier(mnt / "cache", 10 << 20)  # the budget is larger than the disk
        stored = [i for i in range(20) if tier.put(str(i), payload_for(str(i), 64 * KB))]
        assert 1 <= len(stored) < 4 and not tier.enabled
        assert all(tier.get(str(i)) == payload_for(str(i), 64 * KB) for i in stored)
        assert len(caplog.records) == 1 and "No space left" in caplog.text
        tier.close()  # (a file open for writing would keep the remount busy)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        caplog.clear()
        readonly = DiskTier(mnt / "cache", 10 << 20)
        assert readonly.get(str(stored[0])) == payload_for(str(stored[0]), 64 * KB)
        assert not readonly.put("x", b"x") and not readonly.put("y", b"y")
        assert len(caplog.records) == 1 and "Read-only" in caplog.text


def test_directory_removed_under_a_running_tier_is_recreated(root: Path) -> None:
    tier = DiskTier(root, 1 << 20)
    assert tier.put("a", b"a")
    subprocess.run(["rm", "-rf", str(root)], check=True)
    assert tier.get("a") is None
    assert not tier.put("b", b"b")  # fails once, then the tree is made again
    assert tier.put("b", b"b") and tier.get("b") == b"b"
    assert tier.used_bytes() == dir_total(root)


# -- the entry format -----------------------------------------------------------------------

expiries = st.none() | st.floats(min_value=0.0, max_value=4e9, allow_nan=False)


algorithms = st.sampled_from(sorted(CHECKSUMS))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), expiries, algorithms)
def test_format_roundtrip(payload: bytes, expires_at: float | None, algorithm: int) -> None:
    raw = encode_entry(payload, expires_at, algorithm=algorithm)
    assert len(raw) == HEADER_SIZE + len(payload)
    assert raw[5] == algorithm
    assert decode_entry(raw) == (payload, expires_at)


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
    raw = bytearray(encode_entry(payload, expires_at, algorithm=algorithm))
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
        decoded = decode_entry(bytes(raw))
    except EntryFormatError:
        return
    assert decoded == (payload, expires_at)  # only a no-op overwrite may decode
