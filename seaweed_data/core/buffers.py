"""A new ``bytes`` object, filled in place: large reads land in their result, copied once.

A large read used to be received into a buffer and copied into the ``bytes`` handed to the
caller: a second copy, and every page of the new object faulted in by the kernel (on the VMs
we measured, a 4 KiB page fault costs about 2.7 µs: 0.18 s of CPU per 256 MB, more than the
receive itself). :func:`fillable_bytes` gives the ``bytes`` first, with a writable view of its
storage, so the socket writes straight into the result; C code does the same with
``PyBytes_FromStringAndSize(NULL, n)``. The object is immutable to everyone else: it is only
written before it is handed out (the caller's contract), and the view keeps it alive, so a
late write can never land in freed memory. Interpreters without ``ctypes.pythonapi``
(not CPython) get a zeroed ``bytearray`` to fill and one copy at the end.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any


def _bytes_api() -> tuple[Callable[..., bytes], Callable[[bytes], int]] | None:
    api = getattr(ctypes, "pythonapi", None)
    if api is None:  # pragma: no cover - CPython always has it
        return None
    new = api.PyBytes_FromStringAndSize
    new.restype, new.argtypes = ctypes.py_object, (ctypes.c_void_p, ctypes.c_ssize_t)
    address = api.PyBytes_AsString
    address.restype, address.argtypes = ctypes.c_void_p, (ctypes.py_object,)
    return new, address


_API = _bytes_api()


class Fillable:
    """``data`` (``size`` bytes, not initialised) and ``view``, a writable view of them.
    Write every byte through ``view``, then use :meth:`result`."""

    def __init__(self, size: int) -> None:
        if _API is None:  # pragma: no cover - not CPython
            self._buffer: bytearray | None = bytearray(size)
            self.view = memoryview(self._buffer)
            return
        new, address = _API
        data = new(None, size)
        # A subclass per size, since ctypes arrays take no attributes: ``owner`` ties the
        # bytes' life to the view's.
        storage_type: Any = type("_Storage", (ctypes.c_char * size,), {})
        storage = storage_type.from_address(address(data))
        storage.owner = data
        self._buffer, self._data = None, data
        self.view = memoryview(storage).cast("B")

    def result(self) -> bytes:
        """The filled ``bytes`` (call once every byte is written)."""
        return self._data if self._buffer is None else bytes(self._buffer)
