"""DataLoader workers: the heap a worker inherits is frozen out of the garbage collector's way.

A forked worker inherits its parent's objects (torch, the dataset and its listing: some 200,000
objects). Each full collection walks all of them, ~0.1 s in a worker, and the first one also
writes to every object's header, copying each page of the inherited heap. A worker reading a
warm cache delivers tens of thousands of samples a second, so such a pause every few epochs
costs a noticeable share of the epoch. ``gc.freeze()``, the remedy the ``gc`` documentation
gives for forked workers, moves the objects that exist now to a permanent generation that
collections skip. Garbage made afterwards is collected as usual; only reference cycles among
the frozen objects that die in the worker are not reclaimed there.
"""

from __future__ import annotations

import gc
import os

_frozen_in = 0  # the pid that froze its heap


def freeze_inherited_heap() -> None:
    """Freeze the objects this process has now (once per process; for DataLoader workers)."""
    global _frozen_in
    if _frozen_in != os.getpid():
        _frozen_in = os.getpid()
        gc.freeze()
