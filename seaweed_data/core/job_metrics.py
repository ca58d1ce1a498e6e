"""One job's counters summed over its processes (the main process and its DataLoader workers).

Nothing is shared in memory, so nothing outlives a crash: the main process makes a private
directory (:meth:`JobMetrics.create`), the picklable handle travels to the workers (fork or
spawn), and each worker that calls :meth:`JobMetrics.attach` atomically rewrites its own
``<pid>-<token>.json`` with what it counted itself, from a daemon thread at most every
``interval`` seconds and once more when it exits. The main process adds its live counters to
every file (:meth:`JobMetrics.collect`): a worker that died keeps its last report, so at most its
last interval is lost. :meth:`JobMetrics.close` (or the exit of the main process) removes the
directory.

>>> job = JobMetrics.create()                       # doctest: +SKIP
>>> # in each worker (e.g. worker_init_fn, or the dataset's first __getitem__):
>>> job.attach()                                     # doctest: +SKIP
>>> job.collect()["bytes_fetched"]                   # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import multiprocessing.util
import os
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from typing import Any

from .metrics import (
    COUNTER_NAMES,
    HISTOGRAM_NAMES,
    PROCESS,
    Counters,
    Histogram,
    HistogramStats,
)

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 1.0
_Totals = tuple[dict[str, int], dict[str, Histogram]]


class JobMetrics:
    """Handle of one job's metrics directory; picklable, usable in any process of the job.

    In the process that created it, :meth:`collect` and :meth:`histograms` sum its own counters
    (``counters`` given to :meth:`create`, default :data:`~seaweed_data.core.metrics.PROCESS`)
    and every report of the other processes. Elsewhere :meth:`attach` starts reporting.
    """

    def __init__(self, path: str, *, interval: float = DEFAULT_INTERVAL,
                 creator: int | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, not {interval!r}")
        self.path = path
        self.interval = interval
        self._creator = os.getpid() if creator is None else creator
        self._counters: Counters | None = None  # the creator's own; never pickled
        self._remover: weakref.finalize[Any, JobMetrics] | None = None
        self._closed_files: _Totals | None = None

    @classmethod
    def create(cls, counters: Counters | None = None, *, interval: float = DEFAULT_INTERVAL,
               dir: str | None = None) -> JobMetrics:
        """A new job in this (the main) process; its directory goes at :meth:`close` or exit."""
        job = cls(tempfile.mkdtemp(prefix="seaweed-data-job-", dir=dir), interval=interval)
        job._counters = PROCESS if counters is None else counters
        job._remover = weakref.finalize(job, _remove_dir, job.path, job._creator)
        return job

    def __repr__(self) -> str:
        return f"JobMetrics({self.path!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "interval": self.interval, "creator": self._creator}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], interval=state["interval"],  # type: ignore[misc]
                      creator=state["creator"])

    def __enter__(self) -> JobMetrics:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def is_main(self) -> bool:
        """Whether this process created the job (and so owns its directory)."""
        return os.getpid() == self._creator

    # -- in the workers ---------------------------------------------------------------------

    def attach(self, counters: Counters | None = None) -> None:
        """Report ``counters`` (default: the process's) of this process to the job.

        A no-op in the main process, and when already attached; idempotent, cheap, and safe
        to call from every ``__getitem__``. Attaching other counters raises ValueError.
        """
        if self.is_main:
            return
        counters = PROCESS if counters is None else counters
        with _registry.lock:
            reporter = _registry.reporters.get(self.path)
            if reporter is None:
                reporter = _Reporter(self.path, counters, self.interval)
                _registry.reporters[self.path] = reporter
                _registry.hook_exit()
                reporter.start()
        if reporter.counters is not counters:
            raise ValueError(f"{self!r}: this process already reports other counters")

    def flush(self) -> None:
        """Write this process's report now (nothing to do in the main process)."""
        reporter = _registry.reporters.get(self.path)
        if reporter is not None:
            reporter.write()

    def detach(self) -> None:
        """Write a last report of this process and stop reporting."""
        with _registry.lock:
            reporter = _registry.reporters.pop(self.path, None)
        if reporter is not None:
            reporter.stop()

    # -- in the main process ----------------------------------------------------------------

    def collect(self) -> dict[str, int]:
        """The job's counters: this process's plus every other process's last report."""
        values, _ = self._totals()
        return {**dict.fromkeys(COUNTER_NAMES, 0), **values}

    def snapshot(self) -> dict[str, int]:
        """The same as :meth:`collect`; makes a job a metrics source (e.g. for Prometheus)."""
        return self.collect()

    def histograms(self) -> dict[str, HistogramStats]:
        """The job's latency histograms, summed like :meth:`collect`, with quantiles."""
        _, histograms = self._totals()
        names = dict.fromkeys((*HISTOGRAM_NAMES, *histograms))
        return {name: histograms.get(name, Histogram()).stats() for name in names}

    def close(self) -> None:
        """In the main process: keep the last totals and remove the directory.

        Elsewhere: the same as :meth:`detach`. Calling it again is harmless.
        """
        if not self.is_main:
            self.detach()
            return
        if self._remover is not None and self._closed_files is None:
            self._closed_files = self._read_reports(skip=None)
            self._remover()

    def _totals(self) -> _Totals:
        main = self._counters if self.is_main else None
        # Elsewhere, this process's live values replace its last report.
        reporter = None if main is not None else _registry.reporters.get(self.path)
        if self._closed_files is not None:
            values, histograms = _copy(self._closed_files)
        else:
            values, histograms = self._read_reports(reporter.file if reporter else None)
        if main is not None:
            _merge(values, histograms, *main.totals())
        elif reporter is not None:
            _merge(values, histograms, *reporter.counters.own())
        return values, histograms

    def _read_reports(self, skip: str | None) -> _Totals:
        values: dict[str, int] = {}
        histograms: dict[str, Histogram] = {}
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return values, histograms
        for entry in entries:
            if entry.name.endswith(".json") and not entry.name.startswith(".") \
                    and entry.path != skip:
                report = _load(entry.path)
                if report is not None:
                    _merge(values, histograms, *report)
        return values, histograms


class _Reporter:
    """This process's reports to one job: a file, a daemon thread, and the last values written."""

    def __init__(self, path: str, counters: Counters, interval: float) -> None:
        self.counters = counters
        self.interval = interval
        self.file = os.path.join(path, f"{os.getpid()}-{_registry.token}.json")
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._last: dict[str, Any] | None = None
        self._broken = False
        self._thread = threading.Thread(target=self._run, name="seaweed-data-job-metrics",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.write()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.write()

    def write(self) -> None:
        """Rewrite the report if anything changed: temp file, then an atomic rename."""
        with self._lock:
            if self._broken:
                return
            values, histograms = self.counters.own()
            report = {"counters": values,
                      "histograms": {name: h.to_json() for name, h in histograms.items()}}
            if report == self._last:
                return
            temp = os.path.join(os.path.dirname(self.file), f".{secrets.token_hex(8)}.tmp")
            try:
                with open(temp, "w", encoding="utf-8") as out:
                    json.dump({"pid": os.getpid(), "time": time.time(), **report}, out)
                os.replace(temp, self.file)
            except OSError as exc:  # the job is over (directory removed) or the disk is full
                log.debug("job metrics: cannot write %s (%s); stop reporting", self.file, exc)
                self._broken = True
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                return
            self._last = report


class _Registry:
    """This process's reporters, one per job; renewed in a forked child."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reporters: dict[str, _Reporter] = {}
        # In report names: one file per process and job, even after detach and attach again,
        # which a later process that reuses the pid cannot overwrite.
        self.token = secrets.token_hex(4)
        self._exit_hooked = False

    def hook_exit(self) -> None:
        """Make sure the last reports are written at exit (called with the lock held)."""
        if self._exit_hooked:
            return
        self._exit_hooked = True
        # multiprocessing children end with os._exit (no atexit), after running these.
        multiprocessing.util.Finalize(None, _flush_all, exitpriority=100)

    def flush_all(self) -> None:
        for reporter in list(self.reporters.values()):
            reporter.stop()


_registry = _Registry()


def _flush_all() -> None:
    _registry.flush_all()


def _after_fork_in_child() -> None:
    global _registry
    _registry = _Registry()  # the parent's threads do not exist here; its lock may be held


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_all)  # processes that are not multiprocessing children


def _remove_dir(path: str, creator: int) -> None:
    # Inherited by forked children, who must not remove the job of their parent.
    if os.getpid() == creator:
        for _ in range(3):  # a worker may be writing a report into it just now
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.exists(path):
                return


def _load(path: str) -> _Totals | None:
    """One report, or None if it is unreadable (logged, not raised: metrics never fail a job)."""
    try:
        with open(path, encoding="utf-8") as report_file:
            report = json.load(report_file)
        values = report["counters"]
        if not all(isinstance(k, str) and type(v) is int for k, v in values.items()):
            raise ValueError("counters are not integers")
        histograms = {str(name): Histogram.from_json(data)
                      for name, data in report["histograms"].items()}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.debug("job metrics: ignoring unreadable report %s (%s)", path, exc)
        return None
    return values, histograms


def _merge(values: dict[str, int], histograms: dict[str, Histogram],
           more_values: dict[str, int], more_histograms: dict[str, Histogram]) -> None:
    for name, value in more_values.items():
        values[name] = values.get(name, 0) + value
    for name, histogram in more_histograms.items():
        if name in histograms:
            histograms[name].merge(histogram)
        else:
            histograms[name] = histogram.copy()


def _copy(totals: _Totals) -> _Totals:
    values, histograms = totals
    return dict(values), {name: h.copy() for name, h in histograms.items()}
