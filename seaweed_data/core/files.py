"""File objects: a seekable reader and an atomic writer, for ``Client.open``.

The reader works on the entry as it was when the file was opened (its chunk list), so a
concurrent rewrite cannot mix two versions in one handle. Wrapped in :class:`io.BufferedReader`
it serves ``torch.load``, Pillow and :mod:`tarfile`.

The writer spools to memory (then to a temporary file past ``SPOOL_BYTES``) and uploads on
``close()``: nothing appears under the path until the upload succeeded. Leaving a ``with``
block by an exception discards the data.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .entry import Entry

SPOOL_BYTES = 64 * 1024 * 1024

ReadRange = Callable[[Entry, int, int], bytes]
Upload = Callable[[bytes], None]


class RawReader(io.RawIOBase):
    """Unbuffered, seekable view of one entry; ``read_range(entry, offset, length)`` fetches."""

    def __init__(self, entry: Entry, read_range: ReadRange) -> None:
        super().__init__()
        self.entry = entry
        self.name = entry.path
        self._read_range = read_range
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._check_open()
        view = memoryview(buffer).cast("B")
        data = self._read_range(self.entry, self._position, len(view))
        view[: len(data)] = data
        self._position += len(data)
        return len(data)

    def readall(self) -> bytes:
        self._check_open()
        data = self._read_range(self.entry, self._position, max(0, self.size - self._position))
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if position < 0:
            raise OSError(22, f"negative seek position {position} in {self.name!r}")
        self._position = position
        return position

    def tell(self) -> int:
        self._check_open()
        return self._position

    @property
    def size(self) -> int:
        return self.entry.size

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed file {self.name!r}")


class AtomicWriter(io.BufferedIOBase):
    """Collects writes and uploads them in one piece on ``close()``."""

    def __init__(self, path: str, upload: Upload) -> None:
        super().__init__()
        self.name = path
        self._upload = upload
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
        self._aborted = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError(f"write to closed file {self.name!r}")
        return self._spool.write(data)

    def tell(self) -> int:
        return self._spool.tell()

    def abort(self) -> None:
        """Discard everything written; nothing is uploaded."""
        self._aborted = True
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self._aborted:
                self._spool.seek(0, os.SEEK_SET)
                self._upload(self._spool.read())
        finally:
            self._spool.close()
            super().close()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is not None:
            self.abort()
        else:
            self.close()
