"""The demo's results: a plain-text table, the engine's counters, and a PNG chart.

matplotlib is optional (the ``demo`` extra): it is imported only by :func:`save_chart`, which
says so and returns None when it is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .training import CaseResult, EpochResult

SEAWEED = "SeaweedImageFolder + PrefetchSampler"
NAIVE = "naive: one HTTP GET per image via the filer"
LOCAL = "local disk: open(path).read()"


@dataclass
class ShardCheck:
    """TFRecord shards read back: by what, how many records and bytes, whether all matched."""

    reader: str
    shards: int
    records: int
    nbytes: int
    seconds: float
    matches: bool


@dataclass
class DemoReport:
    """Everything the demo measured."""

    dataset: str
    """One line describing the data (count, size, where)."""
    data_bytes: int
    training: CaseResult
    """The CNN trained through SeaweedImageFolder + PrefetchSampler (its counters included)."""
    reading: list[CaseResult]
    """Reading only, per loader: SeaweedImageFolder, naive, local disk (when there is one)."""
    setup: str = ""
    shards: ShardCheck | None = None
    notes: list[str] = field(default_factory=list)
    chart: Path | None = None

    def reader(self, name: str) -> CaseResult | None:
        return next((c for c in self.reading if c.name == name and not c.error), None)


def hit_rate(stats: dict[str, int]) -> float:
    reads = stats.get("cache_hits", 0) + stats.get("cache_misses", 0)
    return stats.get("cache_hits", 0) / reads if reads else 0.0


def precision(stats: dict[str, int]) -> float:
    issued = stats.get("prefetch_issued", 0)
    return stats.get("prefetch_used", 0) / issued if issued else 0.0


def per_epoch_stats(epochs: list[EpochResult]) -> list[dict[str, int]]:
    """Each epoch's own counters (the results hold cumulative ones)."""
    out: list[dict[str, int]] = []
    before: dict[str, int] = {}
    for result in epochs:
        out.append({k: v - before.get(k, 0) for k, v in result.stats.items()})
        before = result.stats
    return out


def format_table(report: DemoReport) -> str:
    """The demo's tables and counters as plain text."""
    lines = [report.dataset, ""]
    lines += [*_training_rows(report.training), ""]
    lines += [*_reading_rows(report), ""]
    lines += _counter_lines(report)
    if report.shards is not None:
        s = report.shards
        verdict = "every record matches" if s.matches else "RECORDS DIFFER"
        lines.append(f"TFRecord: {s.shards} shards, {s.records:,} records "
                     f"({s.nbytes / 1e6:,.1f} MB) read back with {s.reader} in "
                     f"{s.seconds:.2f} s: {verdict}")
    lines += report.notes
    if report.setup:
        lines.append(report.setup)
    return "\n".join(lines)


def _training_rows(case: CaseResult) -> list[str]:
    header = f"{'epoch':>5}{'images/s':>10}{'waiting for data':>18}{'loss':>8}{'accuracy':>10}"
    rows = [f"Training a SmallCNN (3 conv layers, CPU) through {SEAWEED}:", header,
            "-" * len(header)]
    for r in case.epochs:
        rows.append(f"{r.epoch:>5}{r.images_per_s:>10,.0f}{r.wait_share:>17.0%} "
                    f"{r.loss or 0:>8.3f}{r.accuracy or 0:>9.0%}")
    return rows


def _reading_rows(report: DemoReport) -> list[str]:
    naive, local = report.reader(NAIVE), report.reader(LOCAL)
    header = f"{'loader':<46}{'epoch':>6}{'images/s':>10}{'vs naive':>10}{'vs local disk':>15}"
    rows = ["Reading only (decode to tensors, no model; same DataLoader, same order):", header,
            "-" * len(header)]
    for case in report.reading:
        if case.error:
            rows.append(f"{case.name:<46}  failed: {case.error}")
            continue
        for r in case.epochs:
            rows.append(f"{case.name:<46}{r.epoch:>6}{r.images_per_s:>10,.0f}"
                        f"{_ratio(r, naive):>10}{_ratio(r, local):>15}")
    return rows


def _ratio(result: EpochResult, base: CaseResult | None) -> str:
    if base is None or len(base.epochs) < result.epoch:
        return "-"
    return f"{result.images_per_s / base.epochs[result.epoch - 1].images_per_s:.2f}x"


def _counter_lines(report: DemoReport) -> list[str]:
    case = report.training
    if not case.epochs or not case.epochs[-1].stats:
        return []
    total = case.epochs[-1].stats
    epochs = per_epoch_stats(case.epochs)
    each = ", ".join(f"{hit_rate(s):.1%}" for s in epochs)
    fetched = total.get("bytes_fetched", 0)
    times = f" = {fetched / report.data_bytes:.2f}x the data" if report.data_bytes else ""
    return [
        "SeaweedImageFolder counters of the training run (dataset.stats(): main process and "
        "DataLoader workers):",
        f"  cache hit rate      {hit_rate(total):.1%} (per epoch: {each}; hits from memory "
        f"{total.get('cache_hits_memory', 0):,}, from disk {total.get('cache_hits_disk', 0):,})",
        f"  prefetch precision  {precision(total):.1%} (prefetch_used "
        f"{total.get('prefetch_used', 0):,} / prefetch_issued "
        f"{total.get('prefetch_issued', 0):,})",
        f"  bytes fetched       {fetched / 1e6:,.1f} MB{times} "
        f"({total.get('requests', 0):,} requests)",
    ]


def save_chart(report: DemoReport, path: Path) -> Path | None:
    """Throughput, waiting share and the engine's per-epoch counters as a PNG; its path.

    None (and a note in the report) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        report.notes.append("no chart: matplotlib is not installed "
                            "(pip install 'seaweed-data[demo]')")
        return None
    cases = [c for c in report.reading if not c.error and c.epochs]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    _bars(axes[0], cases, lambda r: r.images_per_s, "reading only: images/s")
    _bars(axes[1], [report.training], lambda r: r.images_per_s,
          "training the CNN: images/s")
    _engine_panel(axes[2], report.training)
    figure.suptitle(report.dataset, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    os.replace(temporary, path)
    return path


def _bars(axis: Any, cases: list[CaseResult], value: Any, title: str) -> None:
    epochs = max(len(c.epochs) for c in cases) if cases else 0
    width = 0.8 / max(1, epochs)
    for e in range(epochs):
        xs = [i + e * width for i, c in enumerate(cases) if len(c.epochs) > e]
        ys = [value(c.epochs[e]) for c in cases if len(c.epochs) > e]
        axis.bar(xs, ys, width, label=f"epoch {e + 1}")
    axis.set_xticks([i + width * (epochs - 1) / 2 for i in range(len(cases))])
    axis.set_xticklabels([c.name.split(":")[0].replace(" + ", "\n+ ") for c in cases],
                         fontsize=8)
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)


def _engine_panel(axis: Any, case: CaseResult) -> None:
    axis.set_title("SeaweedImageFolder while training, per epoch (%)", fontsize=10)
    if not case.epochs or not case.epochs[-1].stats:
        axis.text(0.5, 0.5, "no counters", ha="center")
        return
    epochs = per_epoch_stats(case.epochs)
    xs = list(range(1, len(epochs) + 1))
    axis.plot(xs, [100 * hit_rate(s) for s in epochs], "o-", label="cache hit rate")
    axis.plot(xs, [100 * precision(s) if s.get("prefetch_issued") else float("nan")
                   for s in epochs], "s--", label="prefetch precision (when prefetching)")
    axis.plot(xs, [100 * (r.wait_share) for r in case.epochs], "^:",
              label="time waiting for data")
    axis.set_xticks(xs)
    axis.set_xlabel("epoch")
    axis.set_ylim(-5, 105)
    axis.legend(fontsize=8)
