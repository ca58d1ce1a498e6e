"""Ratio tables of the benchmarks' JSON results, as Markdown rows and as PNG bar charts.

Each benchmark writes its own JSON (``benchmarks/results/<name>.json``); :data:`EXTRACTORS`
turns each into :class:`Row` s: a group, a case, what was measured, and the ratio against the
group's baseline, oriented so that higher is better (time and bytes are inverted). The
baseline is the naive way where there is one (a GET per file, curl, ``requests``, LRU).

matplotlib is imported only by :func:`save_chart` (it is in the ``demo`` extra).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    """One line of a ratio table; ``ratio`` is None where nothing is compared."""

    group: str
    case: str
    measured: str
    ratio: float | None


Extractor = Callable[[dict[str, Any]], list[Row]]


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _versus(group: str, base: float, cases: dict[str, float], unit: Callable[[float], str],
            lower_is_better: bool = True) -> list[Row]:
    """Rows of ``cases`` (name -> median) against ``base`` (a median of the same kind)."""
    return [Row(group, name, unit(value),
                (base / value if lower_is_better else value / base) if value and base else None)
            for name, value in cases.items()]


def client_rows(data: dict[str, Any]) -> list[Row]:
    args, med = data["args"], {k: _median(v) for k, v in data["seconds"].items()}
    small = {k: v for k, v in med.items() if k.startswith("a:")}
    big = {k: v for k, v in med.items() if k.startswith("b:")}
    files, mb = args["files"], args["big_bytes"] / 1e6
    return (_versus(f"a: {files:,} files of {args['file_bytes'] // 1024} KB, vs naive GET loop",
                    small.get("a: naive requests loop", 0.0), small,
                    lambda s: f"{files / s:,.0f} files/s")
            + _versus(f"b: one {args['big_bytes'] / 2**20:,.0f} MiB file, vs curl -> tmpfs "
                      "-> bytes",
                      big.get("b: curl -> tmpfs -> bytes", 0.0), big,
                      lambda s: f"{mb / s:,.0f} MB/s"))


def eviction_rows(data: dict[str, Any]) -> list[Row]:
    rows = []
    for row in data["rows"]:
        group = f"cache {row['fraction']:.0%} of {data['keys']:,} keys, hit rate vs lru"
        rates = {name: p["hit_rate"] for name, p in row["policies"].items()}
        rows += _versus(group, rates["lru"], rates, lambda r: f"{r:.1%} hits",
                        lower_is_better=False)
    return rows


def engine_rows(data: dict[str, Any]) -> list[Row]:
    total = data["data_bytes"]
    rows = [Row("hinted epoch", "prefetch_used / prefetch_issued", f"{data['precision']:.4f}",
                None),
            Row("hinted epoch", "epoch 2 bytes fetched / data (cache holds it)",
                f"{data['epoch2_bytes_fetched'] / total:.4f}", None)]
    for fraction in ("50%", "25%"):
        fetched = {p: data[f"{p}@{fraction}"]["bytes_fetched"] for p in ("lru", "future")}
        rows += _versus(f"3 epochs, cache {fraction}: bytes fetched vs lru", fetched["lru"],
                        fetched, lambda b: f"{b / total:.2f}x the data")
    return rows


def imagefolder_rows(data: dict[str, Any]) -> list[Row]:
    rates = data["images_per_s_median"]
    raw = {k: v for k, v in rates.items() if "decode" not in k}
    decode = {k: v for k, v in rates.items() if "decode" in k}

    def unit(r: float) -> str:
        return f"{r:,.0f} images/s"

    return (_versus(f"{data['files']:,} JPEGs, raw bytes, vs naive GET per item",
                    raw.get("naive requests GET per item", 0.0), raw, unit, False)
            + _versus("decoded, vs local disk decode", decode.get("local disk decode", 0.0),
                      decode, unit, False))


def checkpoint_rows(data: dict[str, Any]) -> list[Row]:
    size, med = data["bytes"], {k: _median(v) for k, v in data["seconds"].items()}
    returns = data.get("background_save_returns_seconds") or []
    if returns:
        med["save: background=True, until save() returns"] = _median(returns)
    rows = []
    for group, base in (("load", "load: requests.get + torch.load"),
                        ("save", "save: requests.put (bytes ready)")):
        cases = {k: v for k, v in med.items() if k.startswith(group)}
        rows += _versus(f"{group}, {size / 2**20:,.0f} MiB checkpoint, vs requests", cases[base],
                        cases, lambda s: f"{s:.2f} s ({size / s / 1e6:,.0f} MB/s)")
    return rows


def tfrecord_rows(data: dict[str, Any]) -> list[Row]:
    med = data["median_s"]
    base = next((v for k, v in med.items() if k.startswith("b:")), 0.0)
    payload = data["record_bytes"]
    return _versus(f"{data['shards']} shards, {data['records']:,} records, vs download-then-read",
                   base, med, lambda s: f"{payload / s / 1e6:,.0f} MB/s")


def gpu_train_rows(data: dict[str, Any]) -> list[Row]:
    results = data["results"]
    naive = next((r["epochs"] for name, r in results.items() if name.startswith("naive")), [])
    rows = []
    for name, result in results.items():
        for i, e in enumerate(result["epochs"]):
            base = naive[i]["images_per_s"] if i < len(naive) else 0.0
            rows.append(Row(f"ResNet-50 on {data['device']}, epoch {e['epoch']}, vs naive", name,
                            f"{e['images_per_s']:,.0f} images/s, {e['wait_share']:.0%} waiting",
                            e["images_per_s"] / base if base else None))
    return rows


EXTRACTORS: dict[str, Extractor] = {
    "client": client_rows, "eviction": eviction_rows, "engine": engine_rows,
    "imagefolder": imagefolder_rows, "checkpoint": checkpoint_rows, "tfrecord": tfrecord_rows,
    "tfrecord_python": tfrecord_rows,
    "gpu_train": gpu_train_rows,
}


def rows_of(name: str, data: dict[str, Any]) -> list[Row]:
    """The rows of benchmark ``name``'s JSON; one explanatory row if it cannot be read."""
    try:
        return EXTRACTORS[name](data)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError) as exc:
        return [Row("-", f"results not understood ({type(exc).__name__}: {exc})", "-", None)]


def markdown(tables: dict[str, list[Row]]) -> str:
    """One combined Markdown table of every benchmark's rows."""
    lines = ["| benchmark | group (baseline) | case | measured | vs baseline |",
             "|---|---|---|---|---:|"]
    for name, rows in tables.items():
        for row in rows:
            ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
            lines.append(f"| {name} | {row.group} | {row.case} | {row.measured} | {ratio} |")
    return "\n".join(lines) + "\n"


def save_chart(name: str, rows: list[Row], path: Path) -> Path | None:
    """Horizontal bars of the rows' ratios (log scale when they spread widely); the path, or
    None when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [r for r in rows if r.ratio is not None and r.ratio > 0]
    if not drawn:
        return None
    groups = list(dict.fromkeys(r.group for r in drawn))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figure, axis = plt.subplots(figsize=(11, 0.45 * len(drawn) + 1.6))
    labels = [f"{r.case}" for r in drawn]
    values = [r.ratio or 0.0 for r in drawn]
    bars = axis.barh(range(len(drawn)), values,
                     color=[colours[groups.index(r.group) % len(colours)] for r in drawn])
    for bar, row in zip(bars, drawn, strict=True):
        axis.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                  f" {row.ratio:.2f}x  ({row.measured})", va="center", fontsize=7)
    axis.set_yticks(range(len(drawn)), labels, fontsize=7)
    axis.invert_yaxis()
    axis.axvline(1.0, color="black", linewidth=0.8)
    if max(values) / min(values) > 20:
        axis.set_xscale("log")
        axis.set_xlim(min(values) / 2, max(values) * 20)
    else:
        axis.set_xlim(0, max(values) * 1.6)
    axis.set_xlabel("ratio against the group's baseline (higher is better)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[i % len(colours)])
               for i in range(len(groups))]
    axis.legend(handles, groups, fontsize=7, loc="lower right")
    axis.set_title(f"{name} benchmark", fontsize=10)
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    os.replace(temporary, path)
    return path
