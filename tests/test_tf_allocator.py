"""seaweed_data.tf.allocator: after TensorFlow's malloc patch, large tensors reuse memory.

Each check runs in a fresh interpreter: malloc's thresholds are per process and cannot be
unset. Page faults (``ru_minflt``) are the counter: an 8 MB tensor made in fresh mappings
faults in its ~2,000 pages (times the copies TensorFlow makes) every time; made in reused heap
memory it faults almost none.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow")

from seaweed_data.tf import allocator

PROBE = """
import json, os, resource, sys
import tensorflow as tf
from seaweed_data.tf import allocator

def faults_per_tensor(data, rounds=5):
    tf.constant(data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        tf.constant(data)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds

# TensorFlow's patch: made when the first generator starts.
list(tf.data.Dataset.from_generator(lambda: iter([b"x"]), output_signature=tf.TensorSpec(
    [], tf.string)))
data = os.urandom(8 << 20)
patched = faults_per_tensor(data)
applied = allocator.reuse_large_allocations() if sys.argv[1] == "reuse" else None
print(json.dumps({"patched": patched, "after": faults_per_tensor(data), "applied": applied,
                  "again": allocator.reuse_large_allocations() if applied else None}))
"""


def probe(mode: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          timeout=120, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_large_tensors_reuse_memory_once_the_thresholds_are_raised():
    pages = (8 << 20) // 4096
    untouched = probe("leave")
    assert untouched["patched"] > pages / 2 and untouched["after"] > pages / 2
    raised = probe("reuse")
    assert raised["applied"] is True and raised["again"] is True
    assert raised["patched"] > pages / 2
    assert raised["after"] < pages / 20


def test_elsewhere_than_glibc_nothing_is_changed(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.reuse_large_allocations() is False
    assert allocator.reuse_large_allocations() is False
