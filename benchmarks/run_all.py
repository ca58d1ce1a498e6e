"""Run every benchmark, collect their JSON results, draw a chart per benchmark, and put one
combined ratio table into benchmarks/README.md.

Profiles: the default sizes are those of the README's figures (the full suite takes a while:
tens of minutes on 2 cores); ``--quick`` uses tiny sizes, a smoke test of a few minutes, and
writes to a temporary directory so that it never replaces the committed results. The
benchmarks run one after another (each starts its own SeaweedFS), their output going to
``<out>/<name>.log``. A benchmark whose script or requirements are missing (TensorFlow for
the TFRecord one, curl for the client one, CUDA and torchvision for gpu_train) is skipped with
a note.

Results: ``<out>/<name>.json`` and ``.md`` (written by the benchmark), ``<out>/<name>.png``
(bars of its ratio table), ``<out>/summary.md`` (every table in one). With the default
``--out`` (benchmarks/results) the table also goes into benchmarks/README.md between the
``bench-summary`` markers (``--readme PATH`` to choose another file, ``--no-readme`` not to).
``--render-only`` redraws charts and tables from the JSON already in ``<out>``.

Run: ``python benchmarks/run_all.py [--quick] [--only client,eviction] [--render-only]``
(or ``seaweed-data bench ...``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from charts import Row, markdown, rows_of, save_chart
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
START, END = "<!-- bench-summary:start -->", "<!-- bench-summary:end -->"


@dataclass(frozen=True)
class Benchmark:
    """A benchmark script, its arguments per profile, and what it needs to run."""

    name: str
    script: str
    default: tuple[str, ...]
    quick: tuple[str, ...]
    modules: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    cuda: bool = False


BENCHMARKS = (
    Benchmark("client", "client_bench.py", ("--rounds", "5"), ("--quick",), tools=("curl",)),
    Benchmark("eviction", "eviction.py", (), ("--keys", "2000")),
    Benchmark("engine", "engine_bench.py", ("--files", "2000"), ("--files", "300")),
    Benchmark("imagefolder", "imagefolder_bench.py", ("--files", "10000", "--rounds", "3"),
              ("--files", "300", "--rounds", "1"), modules=("torch", "PIL")),
    Benchmark("checkpoint", "checkpoint_bench.py", ("--rounds", "5"),
              ("--quick", "--rounds", "1"), modules=("torch",)),
    Benchmark("tfrecord", "tfrecord_bench.py", ("--rounds", "3"),
              ("--rounds", "1", "--shards", "2", "--shard-mb", "4"), modules=("tensorflow",)),
    Benchmark("tfrecord_python", "tfrecord_bench.py", ("--rounds", "3", "--consumer", "python"),
              ("--rounds", "1", "--shards", "2", "--shard-mb", "4", "--consumer", "python"),
              modules=("tensorflow",)),
    Benchmark("gpu_train", "gpu_train.py", (), ("--images", "2000", "--epochs", "1"),
              modules=("torchvision",), cuda=True),
)
PEERS = {"s3torchconnector": "compared in imagefolder, through the S3 gateway",
         "webdataset": "not compared by any benchmark yet"}


@dataclass
class Outcome:
    name: str
    status: str
    seconds: float = 0.0


def missing(bench: Benchmark) -> str | None:
    """Why ``bench`` cannot run here, or None."""
    if not (HERE / bench.script).is_file():
        return f"{bench.script} is not there"
    for module in bench.modules:
        if importlib.util.find_spec(module) is None:
            return f"needs the Python package {module}"
    for tool in bench.tools:
        if shutil.which(tool) is None:
            return f"needs the program {tool}"
    if bench.cuda and not _cuda():
        return "needs a CUDA GPU"
    return None


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def run_one(bench: Benchmark, args: argparse.Namespace) -> Outcome:
    """Run ``bench``'s script; its results end up in ``args.out``."""
    why = missing(bench)
    if why:
        return Outcome(bench.name, f"skipped: {why}")
    options = bench.quick if args.quick else bench.default
    staged = args.out.resolve() != RESULTS.resolve()
    workdir = Path(tempfile.mkdtemp(prefix=f".run-{bench.name}-", dir=args.out))
    script = HERE / bench.script
    if staged:  # a copy writes its results next to itself, not over the committed ones
        script = Path(shutil.copy2(script, workdir / bench.script))
    log = args.out / f"{bench.name}.log"
    started = time.perf_counter()
    try:
        with open(log, "w") as out:
            code = subprocess.run([sys.executable, str(script), *options], stdout=out,
                                  stderr=subprocess.STDOUT, cwd=workdir,
                                  timeout=args.timeout).returncode
    except subprocess.TimeoutExpired:
        code = -1
    seconds = time.perf_counter() - started
    if staged:
        for produced in (workdir / "results").glob(f"{bench.name}.*"):
            shutil.move(str(produced), args.out / produced.name)
    shutil.rmtree(workdir, ignore_errors=True)
    status = "ok" if code == 0 else ("timed out" if code == -1 else f"failed (exit {code})")
    return Outcome(bench.name, status if code == 0 else f"{status}, see {log}", seconds)


def render(out: Path, names: list[str]) -> dict[str, list[Row]]:
    """Charts of every result in ``out``; the rows per benchmark."""
    tables = {}
    for name in names:
        source = out / f"{name}.json"
        if source.is_file():
            tables[name] = rows_of(name, json.loads(source.read_text()))
            save_chart(name, tables[name], out / f"{name}.png")
    return tables


def summary(tables: dict[str, list[Row]], outcomes: list[Outcome], profile: str,
            out: Path) -> str:
    charts = "results" if out.resolve() == RESULTS.resolve() else str(out)
    lines = [f"Ratios against each group's baseline (higher is better), from `benchmarks/"
             f"run_all.py` ({profile}); a chart per benchmark in `{charts}/<benchmark>.png`.",
             "",
             markdown(tables).rstrip()]
    notes = [f"- {o.name}: {o.status}" for o in outcomes if o.status != "ok"]
    for peer, where in PEERS.items():
        state = "installed" if importlib.util.find_spec(peer) else "not installed: rows missing"
        notes.append(f"- peer {peer}: {where}; {state}")
    return "\n".join([*lines, "", *notes]) + "\n"


def update_readme(path: Path, text: str) -> None:
    """Put ``text`` between the markers (added after the first paragraph if missing)."""
    readme = path.read_text()
    block = f"{START}\n{text}{END}"
    if START in readme and END in readme:
        head, rest = readme.split(START, 1)
        readme = head + block + rest.split(END, 1)[1]
    else:
        first, _, rest = readme.partition("\n## ")
        readme = f"{first.rstrip()}\n\n## Summary\n\n{block}\n\n## {rest}" if rest else \
            f"{readme.rstrip()}\n\n## Summary\n\n{block}\n"
    path.write_text(readme)


def parse(argv: list[str] | None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = None
    if "--prog" in argv[:-1]:  # how `seaweed-data bench` names itself in --help
        at = argv.index("--prog")
        prog = argv[at + 1]
        del argv[at:at + 2]
    parser = argparse.ArgumentParser(prog=prog,
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--only", help="comma-separated benchmarks to run (default: all of "
                        f"{', '.join(b.name for b in BENCHMARKS)})")
    parser.add_argument("--out", type=Path, help="results directory (default: "
                        "benchmarks/results, or a temporary directory with --quick)")
    parser.add_argument("--render-only", action="store_true",
                        help="run nothing: redraw charts and tables from <out>/*.json")
    parser.add_argument("--readme", type=Path, help="file to put the table into")
    parser.add_argument("--no-readme", action="store_true", help="leave README files alone")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only.split(",")]
    if args.list:
        for b in BENCHMARKS:
            print(f"{b.name:<12} {b.script:<22} default: {' '.join(b.default) or '-'}; "
                  f"quick: {' '.join(b.quick)}; {missing(b) or 'ready'}")
        return 0
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="seaweed-data-bench-")) if args.quick \
            else RESULTS
    args.out.mkdir(parents=True, exist_ok=True)
    outcomes = [] if args.render_only else run_all(chosen, args)
    tables = render(args.out, [b.name for b in chosen])
    profile = "quick profile" if args.quick else "default profile"
    text = summary(tables, outcomes, "charts and table redrawn from the JSON results"
                   if args.render_only else profile, args.out)
    (args.out / "summary.md").write_text(text)
    readme = args.readme or (README if args.out.resolve() == RESULTS.resolve() else None)
    if readme is not None and not args.no_readme:
        update_readme(readme, text)
        print(f"table written into {readme}")
    print(text)
    print(f"results, charts and logs: {args.out}")
    return 0 if all(o.status == "ok" or o.status.startswith("skipped") for o in outcomes) else 1


def run_all(chosen: list[Benchmark], args: argparse.Namespace) -> list[Outcome]:
    outcomes = []
    with tqdm(chosen, unit="benchmark", desc="benchmarks") as bar:
        for bench in bar:
            bar.set_postfix_str(bench.name)
            outcome = run_one(bench, args)
            outcomes.append(outcome)
            bar.write(f"{bench.name}: {outcome.status} ({outcome.seconds:.0f} s)")
    return outcomes


if __name__ == "__main__":
    sys.exit(main())
