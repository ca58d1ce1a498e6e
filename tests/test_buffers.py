"""seaweed_data.core.buffers: large receive buffers ask for transparent huge pages.

Each check fills a fresh 32 MiB buffer in a fresh interpreter and counts its page faults
(``ru_minflt``): ~8,000 (one per 4 KiB page) without the advice, ~500 with it (the unaligned
ends still take small pages), where the kernel honours it (``transparent_hugepage/enabled``
set to ``madvise`` or ``always``).
"""

from __future__ import annotations

import json
import mmap
import subprocess
import sys
from pathlib import Path

import pytest

from seaweed_data.core import buffers

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
SIZE = 32 << 20

PROBE = f"""
import json, resource, sys
from seaweed_data.core import buffers
buffers.HUGE_PAGES_FROM = int(sys.argv[1])
piece = b"x" * (1 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fillable = buffers.Fillable({SIZE})
view = fillable.view
for start in range(0, len(view), 1 << 20):
    view[start:start + (1 << 20)] = piece
data = fillable.result()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def faults(advise_from: int) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, str(advise_from)], capture_output=True,
                          text=True, timeout=60, check=True)
    return int(json.loads(done.stdout.strip().splitlines()[-1]))


def huge_pages_on_advice() -> bool:
    try:
        setting = THP.read_text()
    except OSError:
        return False
    return "[madvise]" in setting or "[always]" in setting


@pytest.mark.skipif(not huge_pages_on_advice(), reason="the kernel gives no huge pages on advice")
def test_a_large_buffer_is_faulted_in_huge_pages():
    pages = SIZE // 4096
    plain = faults(advise_from=SIZE + 1)
    advised = faults(advise_from=buffers.HUGE_PAGES_FROM)
    if "[always]" not in THP.read_text():
        assert plain > pages * 0.9
    # the buffer's two ends are rarely aligned to 2 MiB: up to ~1,000 small pages there
    assert advised < pages / 4


def test_the_advice_covers_whole_pages_only(monkeypatch):
    calls: list[tuple[int, int]] = []

    def advise(address: int, size: int) -> int:
        calls.append((address, size))
        return 0

    monkeypatch.setattr(buffers, "_MADVISE", advise)
    page = mmap.PAGESIZE
    assert buffers.advise_huge_pages(page + 10, 3 * page) is True
    assert calls == [(2 * page, 2 * page)]
    assert buffers.advise_huge_pages(page + 10, page) is False  # no whole page inside
    assert len(calls) == 1
    small = buffers.Fillable(buffers.HUGE_PAGES_FROM - 1)
    large = buffers.Fillable(buffers.HUGE_PAGES_FROM)
    assert len(calls) == 2 and calls[1][1] > buffers.HUGE_PAGES_FROM - 2 * page
    assert len(small.result()) == buffers.HUGE_PAGES_FROM - 1
    assert len(large.result()) == buffers.HUGE_PAGES_FROM
