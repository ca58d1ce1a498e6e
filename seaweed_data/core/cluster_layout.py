"""What the processes of a :class:`~seaweed_data.core.cluster.LocalCluster` look like: their
ports, ``weed`` command lines and working directories.

Every server gets an explicit HTTP port on 127.0.0.1 and its gRPC port at HTTP + 10000
(SeaweedFS's default, which clients given only a URL rely on); the others address the master as
``127.0.0.1:PORT.GRPCPORT`` and the filer likewise. Each runs in ``base_dir/<name>`` holding its
data and its ``security.toml`` (a copy of the given one, or an empty file that shadows any in
``~/.seaweedfs`` or ``/etc/seaweedfs``, since ``weed`` reads the first it finds from ``.``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .discovery import GRPC_PORT_OFFSET
from .process import free_port_pairs

HOST = "127.0.0.1"
S3_ACCESS_KEY = "seaweed_data"
S3_SECRET_KEY = "seaweed_data_secret"
VOLUME_MAX = 30
_ALL_ACTIONS = ["Admin", "Read", "List", "Tagging", "Write"]


@dataclass(frozen=True)
class ClusterPorts:
    """HTTP and gRPC ports of every component, chosen once per start."""

    master: int
    master_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int
    volumes: tuple[tuple[int, int], ...]
    """(http, grpc) of each volume server."""

    @classmethod
    def pick(cls, volumes: int) -> ClusterPorts:
        """Distinct ports that are free right now, each gRPC port at its HTTP port + 10000
        as SeaweedFS expects by default: a client given only the filer's URL finds its gRPC
        port, asks it for the master and reads from the volume servers."""
        pairs = free_port_pairs(3 + volumes, GRPC_PORT_OFFSET, HOST)
        (master, master_grpc), (filer, filer_grpc), (s3, s3_grpc) = pairs[:3]
        return cls(master, master_grpc, filer, filer_grpc, s3, s3_grpc, tuple(pairs[3:]))

    @property
    def master_address(self) -> str:
        return f"{HOST}:{self.master}.{self.master_grpc}"

    @property
    def filer_address(self) -> str:
        return f"{HOST}:{self.filer}.{self.filer_grpc}"


@dataclass(frozen=True)
class ClusterOptions:
    """The knobs of a LocalCluster that shape its command lines."""

    replication: str
    volume_size_limit_mb: int
    s3: bool
    master_args: tuple[str, ...]
    volume_args: tuple[str, ...]
    filer_args: tuple[str, ...]


def weed_commands(ports: ClusterPorts, options: ClusterOptions,
                  base_dir: Path) -> dict[str, list[str]]:
    """``weed`` arguments (without the binary) of every component, by name. User arguments
    come last, so they override ours (Go's flag package keeps the last value)."""
    common = [f"-ip={HOST}", f"-ip.bind={HOST}"]
    commands = {"master": [
        "master", *common, f"-port={ports.master}", f"-port.grpc={ports.master_grpc}",
        "-mdir=.", "-telemetry=false", "-peers=none",
        f"-volumeSizeLimitMB={options.volume_size_limit_mb}",
        f"-defaultReplication={options.replication}", *options.master_args]}
    for i, (port, grpc) in enumerate(ports.volumes):
        commands[f"volume{i}"] = [
            "volume", *common, f"-port={port}", f"-port.grpc={grpc}", "-dir=.",
            f"-max={VOLUME_MAX}", f"-rack=rack{i}", "-dataCenter=dc1",
            f"-master={ports.master_address}", "-preStopSeconds=0", *options.volume_args]
    commands["filer"] = [
        "filer", *common, f"-port={ports.filer}", f"-port.grpc={ports.filer_grpc}",
        f"-master={ports.master_address}", "-defaultStoreDir=.",
        *_socket_flag("-localSocket", base_dir / "filer" / "filer.sock"), *options.filer_args]
    if options.s3:
        commands["s3"] = [
            "s3", *common, f"-port={ports.s3}", f"-port.grpc={ports.s3_grpc}",
            f"-filer={ports.filer_address}", "-config=s3.json",
            "-port.iceberg=0", "-port.lance=0",
            *_socket_flag("-localSocket", base_dir / "s3" / "s3.sock")]
    return commands


def _socket_flag(flag: str, path: Path) -> list[str]:
    """A Unix socket inside our directory when the path fits ``sun_path``; else weed's default
    (``/tmp/seaweedfs-*-<port>.sock``)."""
    return [f"{flag}={path}"] if len(str(path)) < 100 else []


def make_base_dir(given: Path | None) -> Path:
    """``given`` (created if need be, made absolute), else a new temporary directory."""
    if given is None:
        return Path(tempfile.mkdtemp(prefix="seaweed-cluster-"))
    given.mkdir(parents=True, exist_ok=True)
    return given.resolve()


def prepare_workdir(cwd: Path, security: Path | None, s3_keys: tuple[str, str] | None) -> None:
    """Create ``cwd`` with its ``security.toml`` and, for the S3 gateway, ``s3.json``: anonymous
    requests may do anything, and so may the ``s3_keys`` (access key, secret key) identity."""
    cwd.mkdir(parents=True, exist_ok=True)
    target = cwd / "security.toml"
    if security is not None:
        shutil.copyfile(security, target)
    else:
        target.write_bytes(b"")
    if s3_keys is not None:
        identities = [
            {"name": "anonymous", "actions": _ALL_ACTIONS},
            {"name": "admin", "actions": _ALL_ACTIONS,
             "credentials": [{"accessKey": s3_keys[0], "secretKey": s3_keys[1]}]},
        ]
        (cwd / "s3.json").write_text(json.dumps({"identities": identities}, indent=1))


def check_flags(args: Sequence[str], what: str) -> tuple[str, ...]:
    """Extra arguments as a tuple of flags; a bare string is a common mistake."""
    if isinstance(args, str):
        raise ConfigError(f"{what} must be a sequence of flags, not the string {args!r}")
    return tuple(str(arg) for arg in args)
