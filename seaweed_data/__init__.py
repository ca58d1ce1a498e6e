"""seaweed_data: feed PyTorch and TensorFlow training straight from SeaweedFS.

The core API (this module) never imports torch or tensorflow; see ``seaweed_data.torch`` and
``seaweed_data.tf`` for the framework layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Config
from .core.client import Client
from .core.entry import Chunk, Entry
from .core.location import Location, parse_location
from .core.metrics import stats
from .errors import (
    ClusterError,
    ConfigError,
    CorruptDataError,
    InvalidLocationError,
    IsDirectoryError,
    NotDirectoryError,
    NotFoundError,
    PermissionDeniedError,
    RequestTimeoutError,
    SeaweedDataError,
    ServerError,
    TLSError,
    TransportError,
    UnreachableError,
)

if TYPE_CHECKING:
    from .core.cluster import LocalCluster
    from .core.cluster_security import ClusterSecurity

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # LocalCluster pulls in process management only when asked for.
    if name == "LocalCluster":
        from .core.cluster import LocalCluster

        return LocalCluster
    if name == "ClusterSecurity":
        from .core.cluster_security import ClusterSecurity

        return ClusterSecurity
    raise AttributeError(f"module 'seaweed_data' has no attribute {name!r}")


__all__ = [
    "Chunk",
    "Client",
    "ClusterError",
    "ClusterSecurity",
    "Config",
    "ConfigError",
    "CorruptDataError",
    "Entry",
    "InvalidLocationError",
    "IsDirectoryError",
    "LocalCluster",
    "Location",
    "NotDirectoryError",
    "NotFoundError",
    "PermissionDeniedError",
    "RequestTimeoutError",
    "SeaweedDataError",
    "ServerError",
    "TLSError",
    "TransportError",
    "UnreachableError",
    "__version__",
    "parse_location",
    "stats",
]
