"""``seaweed-data stats``: the counters of a running training job, read from outside it.

A job publishes its counters in two ways, and this command reads both:

- its metrics directory (:class:`~seaweed_data.core.job_metrics.JobMetrics`): every
  ``SeaweedImageFolder`` and ``ShardDataset`` makes one, ``<tmp>/seaweed-data-job-*``, where
  each DataLoader worker rewrites ``<pid>-<token>.json`` at least every second. Found by
  scanning the temporary directory (or given with ``--job DIR``). The main process's own
  reads are not in it (they stay in its memory), so a ``num_workers=0`` job shows nothing here;
- a Prometheus endpoint the job started with
  ``seaweed_data.core.prometheus.start_metrics_server(port, source=...)``: ``--prometheus
  http://127.0.0.1:9108/metrics`` (or ``127.0.0.1:9108``) reads everything it exports.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from .core.job_metrics import JobMetrics
from .core.metrics import COUNTER_NAMES, LATENCY_BOUNDS, Histogram, HistogramStats

JOB_PREFIX = "seaweed-data-job-"
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+'
                     r'(?P<value>\S+)')


@dataclass
class JobView:
    """One job's totals: where they came from, counters, latency histograms, processes."""

    source: str
    counters: dict[str, int]
    histograms: dict[str, HistogramStats]
    processes: list[dict[str, Any]] = field(default_factory=list)
    updated: float | None = None
    """Time of the newest report (epoch seconds), for a metrics directory."""

    def derived(self) -> dict[str, float]:
        """Cache hit rate and prefetch precision (0 when nothing was read or prefetched)."""
        c = self.counters
        reads = c.get("cache_hits", 0) + c.get("cache_misses", 0)
        issued = c.get("prefetch_issued", 0)
        return {"cache_hit_rate": c.get("cache_hits", 0) / reads if reads else 0.0,
                "prefetch_precision": c.get("prefetch_used", 0) / issued if issued else 0.0}


def find_jobs(directory: str | None = None) -> list[str]:
    """Metrics directories of this user's jobs under ``directory`` (default: the temporary
    directory), the most recently updated first."""
    base = directory or tempfile.gettempdir()
    found = []
    for path in glob.glob(os.path.join(base, JOB_PREFIX + "*")):
        try:
            info = os.stat(path)
        except OSError:
            continue  # the job ended just now
        if os.path.isdir(path) and info.st_uid == os.getuid():
            found.append((info.st_mtime, path))
    return [path for _, path in sorted(found, reverse=True)]


def read_job(path: str) -> JobView:
    """The totals of the reports in the metrics directory ``path``."""
    reader = JobMetrics(path)  # made here, it holds no counters: it only adds up reports
    processes = []
    for report in sorted(glob.glob(os.path.join(path, "*.json"))):
        try:
            with open(report, encoding="utf-8") as f:
                data = json.load(f)
            pid, when = int(data["pid"]), float(data["time"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        processes.append({"pid": pid, "alive": _alive(pid), "reported": when})
    updated = max((p["reported"] for p in processes), default=None)
    return JobView(path, reader.collect(), reader.histograms(), processes, updated)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scrape(url: str, timeout: float = 10.0) -> JobView:
    """The counters and histograms a Prometheus endpoint of seaweed_data exports."""
    if "://" not in url:
        url = "http://" + url
    if not url.rstrip("/").endswith("/metrics"):
        url = url.rstrip("/") + "/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    return parse_prometheus(text, url)


def parse_prometheus(text: str, source: str, prefix: str = "seaweed_data_") -> JobView:
    """Counters (``<prefix><name>_total``) and histograms (``<prefix><name>_seconds``)."""
    counters: dict[str, int] = {}
    buckets: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or not match["name"].startswith(prefix):
            continue
        name, value = match["name"][len(prefix):], float(match["value"])
        if name.endswith("_seconds_bucket"):
            bound = re.search(r'le="([^"]+)"', match["labels"] or "")
            if bound:
                buckets.setdefault(name[:-15], {})[float(bound[1])] = value
        elif name.endswith("_seconds_sum"):
            sums[name[:-12]] = value
        elif name.endswith("_total"):
            counters[name[:-6]] = int(value)
    histograms = {name: _histogram(cumulative, sums.get(name, 0.0)).stats()
                  for name, cumulative in buckets.items()}
    return JobView(source, {**dict.fromkeys(COUNTER_NAMES, 0), **counters}, histograms)


def _histogram(cumulative: dict[float, float], total: float) -> Histogram:
    counts, before = [], 0.0
    for bound in (*LATENCY_BOUNDS, float("inf")):
        now = cumulative.get(bound, before)
        counts.append(int(now - before))
        before = now
    return Histogram(counts, sum(counts), total)


def format_job(job: JobView, now: float | None = None) -> str:
    """A job as a plain-text table: non-zero counters, derived rates, latency quantiles."""
    lines = [f"job {job.source}"]
    if job.updated is not None:
        alive = sum(1 for p in job.processes if p["alive"])
        age = (now or time.time()) - job.updated
        pids = ", ".join(str(p["pid"]) for p in job.processes)
        lines.append(f"  {len(job.processes)} worker reports (pids {pids}; {alive} alive), "
                     f"newest {age:.1f} s ago")
    shown = {k: v for k, v in job.counters.items() if v}
    if not shown:
        lines.append("  (no counters yet)")
    for name, value in sorted(shown.items()):
        extra = f"  ({value / 2**20:,.1f} MiB)" if name.startswith("bytes_") else ""
        lines.append(f"  {name:<22}{value:>16,}{extra}")
    for name, rate in job.derived().items():
        lines.append(f"  {name.replace('_', ' '):<22}{rate:>16.1%}")
    for name, h in sorted(job.histograms.items()):
        if h["count"]:
            lines.append(f"  {name:<22}  p50 {h['p50'] * 1e3:.2f} ms, p90 {h['p90'] * 1e3:.2f} "
                         f"ms, p99 {h['p99'] * 1e3:.2f} ms ({h['count']:,} requests)")
    return "\n".join(lines)


def as_json(jobs: list[JobView]) -> str:
    """``{"jobs": [...]}`` with counters, derived rates, histograms (no buckets), processes."""
    out = []
    for job in jobs:
        data = asdict(job)
        data["histograms"] = {name: {k: v for k, v in h.items() if k != "buckets"}
                              for name, h in job.histograms.items()}
        data["derived"] = job.derived()
        out.append(data)
    return json.dumps({"jobs": out}, indent=2)
