"""Every knob of seaweed_data in one frozen, validated dataclass.

``Config()`` gives the defaults; ``Config.from_env()`` fills them from ``SEAWEED_DATA_<NAME>``
environment variables (and ``SEAWEED_MASTER`` for the master), the one place where the
environment is read. Sizes accept plain integers or units: ``512MiB``, ``2GB``, ``64k``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

EVICTION_POLICIES = ("lru", "future")
_UNITS = {"": 1, "b": 1, "k": KiB, "kb": 1000, "kib": KiB, "m": MiB, "mb": 1000**2,
          "mib": MiB, "g": GiB, "gb": 1000**3, "gib": GiB, "t": 1024 * GiB, "tb": 1000**4,
          "tib": 1024 * GiB}


def parse_size(value: str | int) -> int:
    """``"512MiB"`` -> 536870912; integers pass through."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"not a size: {value!r} (use e.g. 1048576, 64KiB, 512MB, 2GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True, kw_only=True)
class Config:
    """Options of a client, its cache and its prefetcher. Frozen; validated on creation."""

    master: str | None = None
    """Master URL (``http://host:9333``); discovered from the filer when None."""
    filer_grpc_port: int | None = None
    """The filer's gRPC port, for master discovery; default: its HTTP port + 10000."""
    connect_timeout: float = 3.0
    """Seconds to establish a TCP connection."""
    read_timeout: float = 15.0
    """Seconds a filer or master may stay silent (first byte, and between bytes)."""
    volume_timeout: float = 1.0
    """Seconds a volume server may take to start answering before we fail over."""
    pipelining: bool = True
    """Send small needle reads pipelined (HTTP/1.1) on a few connections per volume server."""
    retries: int = 8
    """Attempts after the first for transient errors (reset, 5xx, 429/503); with the default
    backoff they span 4-7 s, as long as a filer restart."""
    backoff_base: float = 0.05
    backoff_max: float = 2.0
    max_connections: int = 64
    concurrency: int = 32
    """Requests in flight for one ``read_many``."""
    chunk_concurrency: int = 16
    """Chunks of one file fetched in parallel."""
    metadata_ttl: float = 2.0
    """Seconds an entry's chunk list is reused before asking the filer again."""
    location_ttl: float = 300.0
    """Seconds a volume id's server list is reused."""
    slow_server_ttl: float = 60.0
    """Seconds a volume server that failed or stalled is tried last."""
    list_page_size: int = 1000
    memory_cache_bytes: int = 256 * MiB
    disk_cache_dir: str | None = None
    disk_cache_bytes: int = 10 * GiB
    eviction: str = "future"
    prefetch_bytes: int = 256 * MiB
    """Bytes fetched ahead of the consumer (in flight or waiting to be read), at most."""
    prefetch_items: int = 32
    """Files fetched ahead of the consumer, at most."""
    prefetch_timeout: float = 60.0
    """Seconds one prefetch may take before it is given up (the consumer then reads itself)."""
    coalesce_gap_bytes: int = 64 * KiB
    per_server_concurrency: int = 32
    security_toml: str | None = None
    """Path of a SeaweedFS ``security.toml`` holding JWT signing keys; when None, the first
    ``security.toml`` in ``.``, ``~/.seaweedfs``, ``/usr/local/etc/seaweedfs`` or
    ``/etc/seaweedfs`` (as ``weed`` looks), if any. ``WEED_JWT_*_KEY`` variables win."""
    ca_file: str | None = None
    """PEM bundle of a private CA for HTTPS servers."""
    verify_tls: bool = True
    """Check HTTPS servers' certificates (False: accept any, e.g. self-signed)."""
    reuse_large_allocations: bool = True
    """With TensorFlow: let glibc reuse freed blocks of up to 32 MiB (TensorFlow makes each a
    fresh ``mmap``, paid in page faults); see :mod:`seaweed_data.tf.allocator`. False leaves
    malloc as TensorFlow set it."""

    def __post_init__(self) -> None:
        for name in ("security_toml", "ca_file", "disk_cache_dir"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):  # a Path is welcome; stored as str
                object.__setattr__(self, name, os.fspath(value))
            elif value is not None and not isinstance(value, str):
                raise ConfigError(f"Config.{name} must be a path, got {value!r}")
        for f in fields(self):
            self._check_number(f.name, str(f.type), getattr(self, f.name))
        positive = ("connect_timeout", "read_timeout", "volume_timeout", "max_connections",
                    "concurrency", "chunk_concurrency", "list_page_size",
                    "per_server_concurrency", "backoff_base", "backoff_max",
                    "prefetch_timeout")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"Config.{name} must be > 0, got {getattr(self, name)!r}")
        non_negative = ("retries", "metadata_ttl", "location_ttl", "slow_server_ttl",
                        "memory_cache_bytes", "disk_cache_bytes", "prefetch_bytes",
                        "coalesce_gap_bytes", "prefetch_items")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"Config.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.eviction not in EVICTION_POLICIES:
            raise ConfigError(
                f"Config.eviction must be one of {EVICTION_POLICIES}, got {self.eviction!r}")
        if self.master is not None and not _is_master_url(self.master):
            raise ConfigError(
                f"Config.master must look like http://host:port, got {self.master!r}")
        if self.filer_grpc_port is not None and not 0 < self.filer_grpc_port < 65536:
            raise ConfigError(f"Config.filer_grpc_port must be a port (1-65535), got "
                              f"{self.filer_grpc_port!r}")

    @staticmethod
    def _check_number(name: str, kind: str, value: object) -> None:
        """Integer options take integers, float options any finite number."""
        if kind not in ("int", "float", "int | None") or value is None:
            return
        if kind != "float" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"Config.{name} must be an integer, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"Config.{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"Config.{name} must be a finite number, got {value!r}")

    def replace(self, **changes: Any) -> Config:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Defaults, then ``SEAWEED_DATA_*`` (and ``SEAWEED_MASTER``), then ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("SEAWEED_MASTER"):
            values["master"] = _normalize_master(env["SEAWEED_MASTER"])
        for f in fields(cls):
            raw = env.get(f"SEAWEED_DATA_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _convert(f.name, str(f.type), raw)
        values.update(overrides)
        return cls(**values)


def _is_master_url(url: str) -> bool:
    """``http(s)://host[:port][/]`` with a real port number."""
    if not re.match(r"^https?://[^/]+/?$", url):
        return False
    try:
        urlsplit(url).port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return False
    return True


def _normalize_master(value: str) -> str:
    return value if "://" in value else f"http://{value}"


def _convert(name: str, type_name: str, raw: str) -> Any:
    var = f"SEAWEED_DATA_{name.upper()}"
    try:
        if name.endswith("_bytes"):
            return parse_size(raw)
        if type_name in ("int", "int | None"):
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"{var}={raw!r} is not a valid {type_name}") from exc
    if name == "master":
        return _normalize_master(raw)
    return raw or None
