"""Counters and latency histograms: per client, and summed for the whole process in :data:`PROCESS`.

Counters are plain named integers (:data:`COUNTER_NAMES` are always present in a snapshot).
Histograms count durations into the fixed, log-spaced :data:`LATENCY_BOUNDS` (four buckets per
decade from 100 µs to ~30 s, plus an overflow bucket), so that histograms of different clients
and processes add up bucket by bucket. Other processes of the same job (DataLoader workers)
report through :mod:`seaweed_data.core.job_metrics`; Prometheus export lives in
:mod:`seaweed_data.core.prometheus`.
"""

from __future__ import annotations

import bisect
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any, Protocol, TypedDict

COUNTER_NAMES = (
    "bytes_fetched", "requests", "filer_requests", "master_requests", "volume_requests",
    "bytes_uploaded", "retries", "failovers", "cache_hits", "cache_misses",
    "cache_hits_memory", "cache_hits_disk",
    "prefetch_issued", "prefetch_used", "prefetch_wasted", "prefetch_late",
    "pattern_sequential", "pattern_strided", "pattern_random",
)
"""Counters every snapshot contains (zero when unused)."""

HISTOGRAM_NAMES = ("filer_latency", "master_latency", "volume_latency")
"""Histograms every :meth:`Counters.histograms` contains: one try of an HTTP request, from
sending it to the end of its body, per kind of server."""

LATENCY_BOUNDS: tuple[float, ...] = tuple(float(f"{1e-4 * 10 ** (k / 4):.3g}") for k in range(23))
"""Upper bounds (seconds, inclusive) of the histogram buckets: 0.0001, 0.000178, ... 31.6."""

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


class HistogramStats(TypedDict):
    """A histogram as plain data.

    ``buckets[i]`` counts observations in ``(LATENCY_BOUNDS[i-1], LATENCY_BOUNDS[i]]``; the
    last entry counts those above ``LATENCY_BOUNDS[-1]``. Quantiles are estimates (see
    :meth:`Histogram.quantile`), 0.0 when nothing was observed.
    """

    buckets: list[int]
    count: int
    sum: float
    p50: float
    p90: float
    p99: float


class MetricsSource(Protocol):
    """What exporters read: flat counters and histograms (:class:`Counters`, a job's totals)."""

    def snapshot(self) -> dict[str, int]: ...

    def histograms(self) -> dict[str, HistogramStats]: ...


class Histogram:
    """Counts of durations per bucket of :data:`LATENCY_BOUNDS`. Not locked: owners lock."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self, buckets: list[int] | None = None, count: int = 0,
                 total: float = 0.0) -> None:
        self.buckets = buckets if buckets is not None else [0] * (len(LATENCY_BOUNDS) + 1)
        self.count = count
        self.sum = total

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, sum={self.sum:.6g})"

    def observe(self, seconds: float) -> None:
        """Count one duration."""
        self.buckets[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def copy(self) -> Histogram:
        return Histogram(list(self.buckets), self.count, self.sum)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s observations to this one."""
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.count += other.count
        self.sum += other.sum

    def minus(self, base: Histogram) -> Histogram:
        """The observations made since ``base`` (an earlier copy of this histogram)."""
        buckets = [a - b for a, b in zip(self.buckets, base.buckets, strict=True)]
        return Histogram(buckets, self.count - base.count, self.sum - base.sum)

    def quantile(self, q: float) -> float:
        """Estimate of the ``q`` quantile (0 ≤ q ≤ 1) in seconds; 0.0 if empty.

        Interpolates linearly inside the bucket that holds the rank, as Prometheus'
        ``histogram_quantile`` does; in the overflow bucket it answers the last bound.
        """
        if self.count <= 0:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.buckets[:-1]):
            if n and seen + n >= rank:
                lower = LATENCY_BOUNDS[i - 1] if i else 0.0
                return lower + (LATENCY_BOUNDS[i] - lower) * (rank - seen) / n
            seen += n
        return LATENCY_BOUNDS[-1]

    def stats(self) -> HistogramStats:
        """This histogram as plain data, with p50, p90 and p99."""
        p50, p90, p99 = (self.quantile(q) for q in QUANTILES.values())
        return HistogramStats(buckets=list(self.buckets), count=self.count, sum=self.sum,
                              p50=p50, p90=p90, p99=p99)

    def to_json(self) -> dict[str, Any]:
        return {"buckets": self.buckets, "count": self.count, "sum": self.sum}

    @classmethod
    def from_json(cls, data: Any) -> Histogram:
        """The inverse of :meth:`to_json`; ValueError if ``data`` is not one."""
        buckets = data.get("buckets") if isinstance(data, dict) else None
        if (not isinstance(buckets, list) or len(buckets) != len(LATENCY_BOUNDS) + 1
                or not all(type(n) is int for n in buckets)):
            raise ValueError("not a histogram")
        count, total = data.get("count"), data.get("sum")
        if type(count) is not int or not isinstance(total, int | float):
            raise ValueError("not a histogram")
        return cls(buckets, count, float(total))


# Every Counters object, so that a forked child can renew their locks and note what it
# inherited (see Counters._after_fork).
_ALL: weakref.WeakSet[Counters] = weakref.WeakSet()


class Counters:
    """Thread-safe named counters and latency histograms.

    Increments also feed a parent (the process). Pickling carries no values: a copy in another
    process counts that process's work, from zero.
    """

    def __init__(self, parent: Counters | None = None) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}
        self._histograms: dict[str, Histogram] = {}
        self._parent = parent
        self._pid = os.getpid()
        self._base: tuple[dict[str, int], dict[str, Histogram]] = ({}, {})
        _ALL.add(self)

    def __reduce__(self) -> tuple[Any, ...]:
        if self is PROCESS:
            return (_process_counters, ())
        return (Counters, (self._parent,))

    def add(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name`` (here and in the parent)."""
        with self._lock:
            values = self._values
            values[name] = values.get(name, 0) + amount
        if self._parent is not None:
            self._parent.add(name, amount)

    def add_all(self, amounts: dict[str, int]) -> None:
        """Add each of ``amounts`` to its counter (one lock for all, here and in the parent)."""
        with self._lock:
            values = self._values
            for name, amount in amounts.items():
                values[name] = values.get(name, 0) + amount
        if self._parent is not None:
            self._parent.add_all(amounts)

    def observe(self, name: str, seconds: float) -> None:
        """Count one duration into histogram ``name`` (here and in the parent)."""
        with self._lock:
            histogram = self._histograms.get(name)
            if histogram is None:
                histogram = self._histograms[name] = Histogram()
            histogram.observe(seconds)
        if self._parent is not None:
            self._parent.observe(name, seconds)

    def observe_all(self, name: str, durations: Sequence[float]) -> None:
        """:meth:`observe` of each of ``durations`` (one lock for all, here and in the
        parent)."""
        with self._lock:
            histogram = self._histograms.get(name)
            if histogram is None:
                histogram = self._histograms[name] = Histogram()
            for seconds in durations:
                histogram.observe(seconds)
        if self._parent is not None:
            self._parent.observe_all(name, durations)

    def get(self, name: str) -> int:
        """The value of counter ``name`` (0 if never counted)."""
        return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        """Every standard counter (zero if unused) plus any other that was counted."""
        with self._lock:
            values = dict(self._values)
        return {**dict.fromkeys(COUNTER_NAMES, 0), **values}

    def histogram(self, name: str) -> Histogram:
        """A copy of histogram ``name`` (empty if nothing was observed)."""
        with self._lock:
            histogram = self._histograms.get(name)
            return histogram.copy() if histogram is not None else Histogram()

    def histograms(self) -> dict[str, HistogramStats]:
        """Every standard histogram (empty if unused) plus any other, with quantiles."""
        with self._lock:
            copies = {name: h.copy() for name, h in self._histograms.items()}
        names = dict.fromkeys((*HISTOGRAM_NAMES, *copies))
        return {name: copies.get(name, Histogram()).stats() for name in names}

    def totals(self) -> tuple[dict[str, int], dict[str, Histogram]]:
        """Copies of every counter and histogram, taken at one instant."""
        with self._lock:
            return dict(self._values), {name: h.copy() for name, h in self._histograms.items()}

    def own(self) -> tuple[dict[str, int], dict[str, Histogram]]:
        """What this process counted itself: :meth:`totals` minus what it inherited by fork."""
        values, histograms = self.totals()
        base_values, base_histograms = self._base
        for name, value in base_values.items():
            values[name] = values.get(name, 0) - value
        for name, base in base_histograms.items():
            if name in histograms:
                histograms[name] = histograms[name].minus(base)
        return values, histograms

    def reset(self) -> None:
        """Set every counter and histogram back to zero."""
        with self._lock:
            self._values.clear()
            self._histograms.clear()
            self._base = ({}, {})

    def _after_fork(self) -> None:
        """In a forked child (once per process): a fresh lock, and note the inherited values.

        Run for every instance by an at-fork hook; calling it again is harmless.
        """
        pid = os.getpid()
        if self._pid == pid:
            return
        self._pid = pid
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        self._base = (dict(self._values),
                      {name: h.copy() for name, h in self._histograms.items()})


def _process_counters() -> Counters:
    return PROCESS


def _after_fork_in_child() -> None:
    for counters in list(_ALL):
        counters._after_fork()


PROCESS = Counters()
"""Everything every client of this process counted."""

os.register_at_fork(after_in_child=_after_fork_in_child)


def stats() -> dict[str, int]:
    """Process-wide counters: ``bytes_fetched``, ``requests``, ``cache_hits``, ..."""
    return PROCESS.snapshot()


def histograms() -> dict[str, HistogramStats]:
    """Process-wide latency histograms (``volume_latency``, ...), with p50, p90 and p99."""
    return PROCESS.histograms()
