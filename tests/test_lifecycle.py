"""Fork, spawn and pickle safety; nothing of ours survives close()."""

import contextlib
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import time
import weakref

import pytest

import seaweed_data as sd
from seaweed_data.core.loop import LOOP


def socket_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def child_pids() -> list[int]:
    me = str(os.getpid())
    children = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        children.append(int(pid))
            except OSError:
                pass
    return children


def loop_threads() -> int:
    return sum(t.name == "seaweed_data-loop" for t in threading.enumerate())


def block_the_loop() -> threading.Lock:
    """Make the loop thread wait for the returned lock (held); release it to go on."""
    held = threading.Lock()
    held.acquire()
    blocked = threading.Event()

    def wait_for_the_lock() -> None:
        blocked.set()
        held.acquire()
        held.release()

    LOOP.post(wait_for_the_lock)
    assert blocked.wait(10)
    return held


def test_close_leaves_no_thread_socket_or_child(cluster):
    assert LOOP.users == 0
    threads, sockets, children = loop_threads(), socket_fds(), child_pids()
    with cluster.client() as client:
        client.write("/life/a.bin", b"a" * 3_000_000)
        client.read_many(["/life/a.bin"] * 20)
        assert loop_threads() == threads + 1
        assert socket_fds() > sockets
    assert loop_threads() == threads
    assert socket_fds() == sockets
    assert child_pids() == children
    with pytest.raises(ValueError, match="closed"):
        client.read("/life/a.bin")
    client.close()  # idempotent


def test_two_clients_share_one_loop_thread(cluster):
    a, b = cluster.client(), cluster.client()
    a.write("/life/shared.bin", b"s")
    assert b.read("/life/shared.bin") == b"s"
    assert loop_threads() == 1
    a.close()
    assert b.read("/life/shared.bin") == b"s"
    b.close()
    assert loop_threads() == 0


def _read_in_child(client, path, conn):
    try:
        conn.send(client.read(path))
        client.close()
    except BaseException as exc:  # report anything to the parent
        conn.send(repr(exc))


def test_client_works_after_fork(cluster):
    with cluster.client() as client:
        client.write("/life/fork.bin", b"forked" * 100_000)
        assert client.read("/life/fork.bin")[:6] == b"forked"  # parent session is warm
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_read_in_child, args=(client, "/life/fork.bin", child))
        proc.start()
        assert parent.recv() == b"forked" * 100_000
        proc.join(30)
        assert proc.exitcode == 0
        assert client.read("/life/fork.bin", 0, 6) == b"forked"  # parent unaffected


def test_client_works_in_spawned_process_via_pickle(cluster):
    with cluster.client() as client:
        client.write("/life/spawn.bin", b"spawned")
        clone = pickle.loads(pickle.dumps(client))
        assert clone.read("/life/spawn.bin") == b"spawned"
        clone.close()
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_read_in_child, args=(client, "/life/spawn.bin", child))
        proc.start()
        assert parent.recv() == b"spawned"
        proc.join(60)
        assert proc.exitcode == 0


def test_blocking_call_from_the_loop_thread_is_refused(cluster):

    with cluster.client() as client:
        client.write("/life/x.bin", b"x")

        async def inner():
            return client.read("/life/x.bin")

        with pytest.raises(RuntimeError, match="async"):
            LOOP.run(inner())


def test_import_pulls_in_neither_torch_nor_tensorflow():
    code = ("import sys, seaweed_data; "
            "bad = [m for m in ('torch', 'tensorflow') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_client_left_open_is_closed_quietly_at_exit(cluster):
    """A script (or notebook) that never closes its client: the exit handler closes it, so
    aiohttp has no unclosed session or connector to complain about on stderr."""
    code = ("import seaweed_data as sd, sys; "
            f"c = sd.Client({cluster.filer_url!r}, sd.Config(master={cluster.master_url!r})); "
            "c.write('/life/left-open.bin', b'x' * 200_000); "
            "assert len(c.read('/life/left-open.bin')) == 200_000; "
            "from seaweed_data.core.client import _OPEN; print(len(_OPEN))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"  # open until the exit handler ran
    assert "Unclosed" not in result.stderr, result.stderr


def test_the_exit_handler_closes_only_the_clients_left_open(cluster, monkeypatch):
    from seaweed_data.core import client as client_module

    open_clients: weakref.WeakSet[sd.Client] = weakref.WeakSet()
    monkeypatch.setattr(client_module, "_OPEN", open_clients)  # this test's clients only
    with cluster.client() as closed:
        closed.read_many([])
        assert set(open_clients) == {closed}
    assert not open_clients
    left, users = cluster.client(), LOOP.users
    left.read_many([])
    assert set(open_clients) == {left} and LOOP.users == users + 1
    client_module._close_clients_left_open()  # what runs at exit
    assert left._closed and not open_clients and LOOP.users == users


@pytest.mark.timeout(30)
def test_the_exit_handler_gives_up_on_a_stuck_loop_thread(cluster, monkeypatch):
    from seaweed_data.core import client as client_module

    open_clients: weakref.WeakSet[sd.Client] = weakref.WeakSet()
    monkeypatch.setattr(client_module, "_OPEN", open_clients)
    monkeypatch.setattr(client_module, "EXIT_CLOSE_S", 0.3)
    first, second = cluster.client(), cluster.client()
    first.read_many([])
    second.read_many([])
    held = block_the_loop()
    start = time.monotonic()
    try:
        client_module._close_clients_left_open()
        elapsed = time.monotonic() - start
    finally:
        held.release()
    assert elapsed < 2  # the budget (0.3 s) went to the first client; the next is skipped
    assert len(open_clients) == 1
    first.close()
    second.close()
    assert not open_clients


@pytest.mark.timeout(30)
def test_the_exit_handler_lets_handed_over_closes_finish(cluster, monkeypatch):
    """A client collected just before exit hands its close to the loop thread; the exit
    handler waits for it, or the daemon thread would be frozen halfway through."""
    from seaweed_data.core import client as client_module

    monkeypatch.setattr(client_module, "_OPEN", weakref.WeakSet())
    client = cluster.client()
    assert client.listdir("/") is not None
    http = client._core.http
    held = block_the_loop()
    client.__del__()  # as when collected: the close is handed to the (busy) loop thread
    assert http._session is not None
    threading.Timer(0.2, held.release).start()
    client_module._close_clients_left_open()
    assert http._session is None


def test_close_on_the_loop_thread_closes_without_waiting(cluster):
    """A client closed on the loop thread (say, its dataset collected there) cannot wait for
    the loop: its connections are closed there soon after, not left open."""
    client = cluster.client()
    assert client.listdir("/") is not None  # a session with a connection
    http, users = client._core.http, LOOP.users

    async def close_here() -> None:
        client.close()

    LOOP.run(close_here())
    deadline = time.monotonic() + 10
    while http._session is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert http._session is None and client._closed and LOOP.users == users - 1


def test_repr_and_stats():
    client = sd.Client("127.0.0.1:1")
    assert repr(client) == "Client('http://127.0.0.1:1')"
    assert client.stats()["requests"] == 0
    assert set(sd.stats()) >= {"bytes_fetched", "requests", "cache_hits", "cache_misses",
                               "prefetch_issued", "prefetch_used", "prefetch_wasted"}
    client.close()


@pytest.mark.timeout(30)
def test_a_finalized_client_never_waits_for_the_loop_thread(cluster):
    """GC may finalize a client anywhere, e.g. while this thread holds the import lock that
    the loop thread needs: __del__ must hand the close over, not wait for it."""
    client = cluster.client()
    client.read_many([])  # start its core on the loop thread
    held = block_the_loop()
    client.__del__()  # with a waiting close, this would never return
    held.release()
    assert client._closed
    with sd.Client(cluster.filer_url, sd.Config(master=cluster.master_url)) as other:
        assert other.listdir("/") is not None  # the loop serves new clients afterwards


def test_posted_calls_keep_their_order_with_coroutines_sent_before_them():
    """A prefetched file's claim (a submitted read) and the next hints (a posted call) must
    reach the engine in the order they were sent, or the hints cancel the claimed prefetch."""
    order: list[str] = []

    async def first_step(name: str) -> None:
        order.append(name)

    LOOP.acquire()
    try:
        for i in range(50):
            LOOP.submit(first_step(f"submitted {i}"))
            LOOP.post(order.append, f"posted {i}")
        LOOP.run(first_step("last"))
    finally:
        LOOP.release()
    expected = [f"{kind} {i}" for i in range(50) for kind in ("submitted", "posted")]
    assert order == [*expected, "last"]
