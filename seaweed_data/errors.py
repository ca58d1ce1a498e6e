"""The one exception tree of seaweed_data.

::

    SeaweedDataError
    ├── ConfigError                 (also ValueError)   a bad option or environment variable
    ├── InvalidLocationError        (also ValueError)   a URL or path we cannot parse
    ├── NotFoundError               (also FileNotFoundError)
    ├── NotDirectoryError           (also NotADirectoryError)
    ├── IsDirectoryError            (also IsADirectoryError)
    ├── PermissionDeniedError       (also PermissionError)  401/403, missing or wrong JWT key
    ├── TransportError              (also OSError)      the network failed after all retries
    │   ├── UnreachableError                            cannot connect to a server
    │   ├── RequestTimeoutError     (also TimeoutError) a server did not answer in time
    │   └── TLSError                                    an HTTPS certificate is not trusted
    ├── ServerError                                     an unexpected HTTP status
    ├── CorruptDataError                                bad checksum, size or framing
    └── ClusterError                                    a LocalCluster failed to start

Every error names the path (and the offset where one applies) and never carries credentials.
"""

from __future__ import annotations


class SeaweedDataError(Exception):
    """Base class of every error this package raises."""

    def __str__(self) -> str:
        # One plain message, also for the OSError subclasses (no "[Errno ...]" prefix).
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ConfigError(SeaweedDataError, ValueError):
    """An option or a ``SEAWEED_DATA_*`` environment variable has a bad value."""


class InvalidLocationError(SeaweedDataError, ValueError):
    """A location (``seaweedfs://``, ``http(s)://`` or a bare path) cannot be used."""


class NotFoundError(SeaweedDataError, FileNotFoundError):
    """The path does not exist on the filer."""

    def __init__(self, path: str, detail: str = "") -> None:
        self.path = path
        msg = f"No such file or directory: {path!r}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class NotDirectoryError(SeaweedDataError, NotADirectoryError):
    """A directory operation was asked of a file."""


class IsDirectoryError(SeaweedDataError, IsADirectoryError):
    """A file operation was asked of a directory."""


class PermissionDeniedError(SeaweedDataError, PermissionError):
    """The server refused the request (HTTP 401/403): a JWT key is missing or wrong."""


class TransportError(SeaweedDataError, OSError):
    """A request failed at the network level after every retry."""


class UnreachableError(TransportError):
    """A server could not be connected to."""


class RequestTimeoutError(TransportError, TimeoutError):
    """A server accepted the connection but did not answer in time."""


class TLSError(TransportError):
    """The TLS handshake with an HTTPS server failed, e.g. its certificate is not trusted."""


class ServerError(SeaweedDataError):
    """A server answered with a status we cannot use."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CorruptDataError(SeaweedDataError):
    """Data failed a checksum, size or framing check."""

    def __init__(self, message: str, path: str = "", offset: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class ClusterError(SeaweedDataError):
    """A LocalCluster could not be started or stopped."""


__all__ = [
    "ClusterError",
    "ConfigError",
    "CorruptDataError",
    "InvalidLocationError",
    "IsDirectoryError",
    "NotDirectoryError",
    "NotFoundError",
    "PermissionDeniedError",
    "RequestTimeoutError",
    "SeaweedDataError",
    "ServerError",
    "TransportError",
    "UnreachableError",
]
