"""Large blocks that glibc keeps for reuse: the hand-off into TensorFlow without page faults.

The first time a ``tf.data`` generator starts, TensorFlow sets glibc's ``M_TRIM_THRESHOLD`` to
128 KiB (its log: "Memory patch applied"). Setting it also freezes glibc's mmap threshold at
its initial 128 KiB. From then on every allocation above 128 KiB, in every part of the
process, is a fresh ``mmap`` returned to the kernel when freed: each of its pages is faulted
in again on first touch. Every window of TFRecord frames (4 MiB) becomes a string tensor
through such an allocation, and every prefetched shard lands in one. Copying 32 MB into a new
tensor that way costs ~47 ms on the development VM (31,000 page faults), against ~6 ms into
reused memory.

:func:`reuse_large_allocations` sets the thresholds to what glibc's own dynamic adjustment
reaches after freeing blocks of its maximum size: blocks of up to 32 MiB come from the heap and
are reused, and up to 64 MiB of free memory may stay at a heap's top. It is called once per
process, by the first file a ``TFRecordDataset`` reads, which is after TensorFlow's patch (made
when the generator starts). Like that patch, it runs on a reading thread while others may
allocate: glibc documents ``mallopt`` as meant for single-threaded set-up
(``MT-Unsafe const:mallopt``); the parameters are plain words it reads without a lock.
``Config(reuse_large_allocations=False)`` leaves it alone.
Elsewhere than glibc it does nothing.

A limit it cannot lift: a heap of a thread's arena (not the main one; the event loop's
thread allocates the prefetched shards there) that becomes empty is unmapped whatever the
thresholds, so large blocks allocated there are often faulted in again.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import threading

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 32 << 20
"""Allocations up to this size come from the heap: glibc's largest dynamic mmap threshold."""
TRIM_THRESHOLD = 64 << 20
"""Free memory a heap may keep at its top: twice the mmap threshold, as glibc itself sets."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_lock = threading.Lock()
_applied: bool | None = None


def reuse_large_allocations() -> bool:
    """Set glibc's thresholds (once per process); whether they are set."""
    global _applied
    with _lock:
        if _applied is None:
            _applied = _set_thresholds()
        return _applied


def _set_thresholds() -> bool:
    if platform.libc_ver()[0] != "glibc":
        log.debug("not glibc: malloc thresholds left alone")
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied: bool = (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
               and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    log.debug("malloc: mmap threshold %d, trim threshold %d bytes: %s", MMAP_THRESHOLD,
              TRIM_THRESHOLD, "set" if applied else "refused")
    return applied
