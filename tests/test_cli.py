"""The seaweed-data command (demo, ingest, server, bench, stats) against a real SeaweedFS, the
benchmark runner, and gpu_train.py's message on a machine without CUDA."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import seaweed_data as sd
from seaweed_data.cli import main
from seaweed_data.core.prometheus import start_metrics_server
from seaweed_data.core.records import iter_records
from seaweed_data.demo import data as demo_data
from seaweed_data.demo import shards as demo_shards
from seaweed_data.torch import SeaweedImageFolder, ShardDataset

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "seaweed_data.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


# -- help and arguments ------------------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["demo"], ["ingest"], ["server"], ["stats"]])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: seaweed-data")
    if not command:
        for name in ("demo", "ingest", "server", "bench", "stats"):
            assert name in out


def test_bench_help_is_the_runners(capfd):
    assert main(["bench", "--help"]) == 0
    out = capfd.readouterr().out
    assert "usage: seaweed-data bench" in out
    for option in ("--quick", "--only", "--render-only"):
        assert option in out


def test_bad_arguments(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["ingest", "--shard-size", "lots", str(tmp_path), "/x"])
    with pytest.raises(SystemExit):
        main(["server", "--bogus"])
    assert main(["demo", "--images", "0"]) == 2
    assert main(["ingest", str(tmp_path / "missing"), "/x"]) == 1
    assert "not a directory" in capsys.readouterr().err


# -- demo --------------------------------------------------------------------------------------

def test_demo_tiny_on_a_local_cluster(tmp_path):
    chart = tmp_path / "chart.png"
    result = run_cli("demo", "--images", "120", "--epochs", "1", "--shards", "2",
                     "--batch-size", "32", "--chart", str(chart))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "starting a local SeaweedFS" in out
    assert "Training a SmallCNN" in out and "Reading only" in out
    for loader in ("SeaweedImageFolder + PrefetchSampler", "naive: one HTTP GET per image",
                   "local disk"):
        assert loader in out
    for counter in ("cache hit rate", "prefetch precision", "bytes fetched"):
        assert counter in out
    precision = re.search(r"prefetch precision +([0-9.]+)%", out)
    assert precision and float(precision[1]) >= 90, out
    assert "= 1.00x the data" in out  # one epoch: every image fetched exactly once
    assert "TFRecord: 2 shards, 120 records" in out and "every record matches" in out
    assert f"chart: {chart}" in out
    assert chart.read_bytes().startswith(PNG_MAGIC)


def test_demo_on_your_own_image_folder(cluster, unique_dir, tmp_path, capsys):
    with cluster.client() as client:
        demo_data.write_image_folder(client, f"{unique_dir}/images", 40, 32)
    chart = tmp_path / "mine.png"
    assert main(["demo", "--filer", cluster.filer_url, "--data", f"{unique_dir}/images",
                 "--images", "30", "--epochs", "1", "--batch-size", "16", "--image-size", "32",
                 "--chart", str(chart)]) == 0
    out = capsys.readouterr().out
    assert "30 images per epoch (10 classes" in out
    assert "naive: one HTTP GET per image" in out
    assert "local disk: open" not in out and "TFRecord:" not in out
    assert "your data: no local-disk row" in out
    assert chart.read_bytes().startswith(PNG_MAGIC)


def test_demo_on_a_given_filer_cleans_up(cluster, tmp_path, capsys, monkeypatch):
    # Without TensorFlow the shards are read back by ShardDataset (and TensorFlow is not
    # imported into the test process).
    monkeypatch.setattr(demo_shards, "tensorflow_available", lambda: False)
    assert main(["demo", "--filer", cluster.filer_url, "--images", "40", "--epochs", "1",
                 "--shards", "2", "--workers", "0", "--chart", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "read back with seaweed_data.torch.ShardDataset" in out
    assert "every record matches" in out
    with cluster.client() as client:
        assert not [n for n in client.listdir("/") if n.startswith("seaweed-data-demo-")]


# -- ingest ------------------------------------------------------------------------------------

def make_tree(root: Path) -> dict[str, bytes]:
    files = {f"class_{i % 3}/img_{i:03d}.jpg": os.urandom(100 + 37 * i) for i in range(30)}
    files["top.txt"] = b"top level"
    files["deep/er/still/big.bin"] = os.urandom((8 << 20) + 12345)  # streamed from disk
    for relpath, data in files.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(data)
    return files


def test_ingest_uploads_a_tree_and_resumes(cluster, unique_dir, tmp_path, capsys):
    files = make_tree(tmp_path)
    dest = f"{cluster.filer_url}{unique_dir}"
    assert main(["ingest", str(tmp_path), dest, "--quiet"]) == 0
    assert "uploaded 32 " in capsys.readouterr().out
    with cluster.client() as client:
        for relpath, data in files.items():
            assert client.read(f"{unique_dir}/{relpath}") == data
        mtimes = {p: client.stat(f"{unique_dir}/{p}").mtime for p in files}

    uploaded = sd.stats()["bytes_uploaded"]
    assert main(["ingest", str(tmp_path), dest, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "uploaded 0 (0.0 MB), 32 already there; 5 directory listings" in out
    assert sd.stats()["bytes_uploaded"] == uploaded  # nothing went up
    with cluster.client() as client:
        assert {p: client.stat(f"{unique_dir}/{p}").mtime for p in files} == mtimes

    (tmp_path / "top.txt").write_bytes(b"changed: another size")
    (tmp_path / "class_0" / "new.jpg").write_bytes(b"new")
    assert main(["ingest", str(tmp_path), dest, "--quiet", "--workers", "2"]) == 0
    assert "uploaded 2 " in capsys.readouterr().out
    with cluster.client() as client:
        assert client.read(f"{unique_dir}/top.txt") == b"changed: another size"
        assert client.read(f"{unique_dir}/class_0/new.jpg") == b"new"


def manifest_of(client, directory):
    return json.loads(client.read(f"{directory}/shards.json"))


def test_ingest_tfrecord_shards_hold_every_file_once(cluster, unique_dir, tmp_path, capsys):
    files = make_tree(tmp_path)
    dest = f"{cluster.filer_url}{unique_dir}"
    assert main(["ingest", str(tmp_path), dest, "--shards", "tfrecord", "--shard-size", "2KB",
                 "--quiet"]) == 0
    assert "tfrecord shards in" in capsys.readouterr().out
    with cluster.client() as client:
        plan = manifest_of(client, unique_dir)
        assert plan["format"] == "tfrecord" and len(plan["shards"]) > 3
        listed = [path for shard in plan["shards"] for path, _ in shard["files"]]
        assert sorted(listed) == sorted(files) and len(set(listed)) == len(listed)
        for shard in plan["shards"]:  # record k of a shard is its k-th listed file
            location = f"{unique_dir}/{shard['name']}"
            with client.open(location) as stream:
                records = list(iter_records(stream, path=location))
            assert records == [files[path] for path, _ in shard["files"]]
    shards = ShardDataset(f"{dest}/shard-*.tfrecord")
    assert Counter(bytes(r) for r in shards) == Counter(files.values())
    shards.close()
    assert main(["ingest", str(tmp_path), dest, "--shards", "tfrecord", "--shard-size", "2KB",
                 "--quiet"]) == 0
    assert "uploaded 0 (0.0 MB), 32 already there" in capsys.readouterr().out


def test_ingest_pt_shards_read_by_shard_dataset(cluster, unique_dir, tmp_path, capsys):
    files = make_tree(tmp_path)
    dest = f"{cluster.filer_url}{unique_dir}"
    assert main(["ingest", str(tmp_path), dest, "--shards", "pt", "--shard-size", "4KB",
                 "--quiet"]) == 0
    shards = ShardDataset(f"{dest}/*.pt", shuffle=True, seed=3)
    loader = DataLoader(shards, batch_size=None, num_workers=2)
    seen = Counter()
    for sample in loader:
        assert sample["data"] == files[sample["path"]]
        seen[sample["path"]] += 1
    shards.close()
    assert seen == Counter(dict.fromkeys(files, 1))


# -- stats -------------------------------------------------------------------------------------

@pytest.fixture
def running_job(cluster, unique_dir):
    """A SeaweedImageFolder whose two persistent DataLoader workers read every file once."""
    with cluster.client() as client:
        written = demo_data.write_image_folder(client, unique_dir, 40, 16)
    dataset = SeaweedImageFolder(f"{cluster.filer_url}{unique_dir}", loader=bytes,
                                 config=sd.Config(master=cluster.master_url))
    loader = DataLoader(dataset, batch_size=8, num_workers=2, persistent_workers=True,
                        collate_fn=list)
    assert sum(len(batch) for batch in loader) == 40  # the workers stay alive
    yield dataset, written.total_bytes
    del loader
    dataset.close()


def stats_json(capsys, *args):
    assert main(["stats", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)["jobs"]


def test_stats_reads_a_running_jobs_metrics_directory(running_job, capsys):
    dataset, data_bytes = running_job
    path = dataset._jobs.path
    deadline = time.monotonic() + 20  # workers report at least every second
    while True:
        (job,) = stats_json(capsys, "--job", path)
        if job["counters"]["bytes_fetched"] == data_bytes or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert job["counters"]["bytes_fetched"] == data_bytes
    assert job["counters"]["volume_requests"] >= 40
    assert len(job["processes"]) == 2 and all(p["alive"] for p in job["processes"])
    assert job["histograms"]["volume_latency"]["count"] >= 40
    assert path in [j["source"] for j in stats_json(capsys)]  # found without --job

    assert main(["stats", "--job", path]) == 0
    table = capsys.readouterr().out
    assert f"job {path}" in table and "2 worker reports" in table
    assert "bytes_fetched" in table and "cache hit rate" in table and "volume_latency" in table


def test_stats_reads_a_prometheus_endpoint(running_job, capsys):
    dataset, data_bytes = running_job
    with start_metrics_server(0, source=dataset._jobs) as server:
        deadline = time.monotonic() + 20
        while True:
            (job,) = stats_json(capsys, "--prometheus", f"127.0.0.1:{server.port}")
            expected = dataset.stats()
            if job["counters"]["bytes_fetched"] == data_bytes or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert job["source"] == server.url
    assert job["counters"]["bytes_fetched"] == expected["bytes_fetched"] == data_bytes
    assert job["counters"]["requests"] == expected["requests"]
    assert job["histograms"]["volume_latency"]["count"] >= 40


def test_stats_without_a_job(tmp_path, capsys):
    assert main(["stats", "--tmp", str(tmp_path)]) == 1
    assert "no seaweed_data job found" in capsys.readouterr().out


# -- server ------------------------------------------------------------------------------------

def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_server_prints_urls_and_stops_its_processes(stop):
    proc = subprocess.Popen([sys.executable, "-m", "seaweed_data.cli", "server"],
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Ctrl-C" in line or not line:
                break
        urls = dict(line.split(None, 1) for line in lines if line.startswith(("filer", "master")))
        assert urls["filer"].startswith("http://127.0.0.1:"), lines
        assert urls["master"].startswith("http://127.0.0.1:"), lines
        assert any(line.startswith("volume0 http://127.0.0.1:") for line in lines)
        weeds = children(proc.pid)
        assert len(weeds) >= 3  # master, volume server, filer
        with sd.Client(urls["filer"].strip()) as client:
            client.write("/hello", b"hi")
            assert client.read("/hello") == b"hi"
        proc.send_signal(stop)
        assert proc.wait(60) == 0
        assert "stopping" in proc.stdout.read()
        assert not [pid for pid in weeds if alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- benchmarks --------------------------------------------------------------------------------

def test_bench_runs_a_quick_benchmark_and_renders(tmp_path, capfd):
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nIntro.\n\n## One\n\nText that stays.\n")
    out = tmp_path / "out"
    assert main(["bench", "--quick", "--only", "eviction", "--out", str(out),
                 "--readme", str(readme)]) == 0
    printed = capfd.readouterr()
    assert "eviction: ok" in printed.out + printed.err
    assert (out / "eviction.json").is_file() and (out / "eviction.log").is_file()
    assert (out / "eviction.png").read_bytes().startswith(PNG_MAGIC)
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nIntro.\n\n## Summary\n\n<!-- bench-summary:start -->")
    assert "| eviction | cache 50% of 2,000 keys, hit rate vs lru | future |" in text
    assert "## One\n\nText that stays." in text
    # Rendering again replaces the table between the markers, nothing else.
    assert main(["bench", "--render-only", "--only", "eviction", "--out", str(out),
                 "--readme", str(readme)]) == 0
    again = readme.read_text()
    assert again.count("<!-- bench-summary:start -->") == 1 and "Text that stays." in again
    assert "redrawn from the JSON results" in again


def test_bench_list_and_skips(capfd):
    assert main(["bench", "--list"]) == 0
    out = capfd.readouterr().out
    for name in ("client", "eviction", "engine", "imagefolder", "checkpoint", "gpu_train"):
        assert name in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU machine")
def test_gpu_train_without_cuda_says_so():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_train.py")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "needs a CUDA GPU" in result.stdout


def test_tfrecord_read_back_falls_back_to_shard_dataset(cluster, unique_dir, monkeypatch):
    monkeypatch.setattr(demo_shards, "tensorflow_available", lambda: False)
    records = [os.urandom(n) for n in range(1, 50)]
    with cluster.client() as client:
        paths = demo_data.write_tfrecord_shards(client, unique_dir, records, 3)
    config = sd.Config(master=cluster.master_url)
    check = demo_shards.read_back(cluster.filer_url, paths, records, config)
    assert check.reader == "seaweed_data.torch.ShardDataset"
    assert (check.shards, check.records, check.matches) == (3, 49, True)
    assert check.nbytes == sum(len(r) for r in records)
    assert not demo_shards.read_back(cluster.filer_url, paths, records[1:], config).matches


def test_tfrecord_read_back_with_tensorflow_times_the_read_only(cluster, unique_dir,
                                                                 monkeypatch):
    pytest.importorskip("tensorflow")
    records = [os.urandom(n) for n in range(1, 30)]
    with cluster.client() as client:
        paths = demo_data.write_tfrecord_shards(client, unique_dir, records, 2)
    events: list[str] = []
    reader = demo_shards._reader

    def imported(*args: Any) -> Any:
        made = reader(*args)  # the reader's modules are imported by now
        events.append("imported")
        return made

    monkeypatch.setattr(demo_shards, "_reader", imported)
    clock = demo_shards.perf_counter
    monkeypatch.setattr(demo_shards, "perf_counter", lambda: events.append("clock") or clock())
    check = demo_shards.read_back(cluster.filer_url, paths, records,
                                  sd.Config(master=cluster.master_url))
    assert check.reader == "seaweed_data.tf.TFRecordDataset (tf.data)"
    assert (check.shards, check.records, check.matches) == (2, 29, True)
    assert events == ["imported", "clock", "clock"]  # the import is not timed


def test_the_demo_imports_tensorflow_without_its_start_up_log():
    pytest.importorskip("tensorflow")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    code = ("import sys, seaweed_data as sd; from seaweed_data.demo.shards import _reader; "
            "name, _ = _reader(['/x.tfrecord'], sd.Config()); "
            "assert 'tensorflow' in sys.modules; print(name)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "seaweed_data.tf.TFRecordDataset (tf.data)"
    assert "oneDNN" not in result.stderr and "I0000" not in result.stderr, result.stderr


def test_ingest_result_api(cluster, unique_dir, tmp_path):
    from seaweed_data.ingest import ingest, plan_shards, scan

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"x" * 10)
    (tmp_path / "y.bin").write_bytes(b"y" * 30)
    assert [(f.relpath, f.size) for f in scan(tmp_path)] == [("a/x.bin", 10), ("y.bin", 30)]
    assert [[f.relpath for f in g] for g in plan_shards(scan(tmp_path), 15)] == \
        [["a/x.bin"], ["y.bin"]]
    with cluster.client() as client:
        result = ingest(client, tmp_path, unique_dir, progress=False)
        assert (result.files, result.uploaded, result.skipped) == (2, 2, 0)
        assert result.bytes_uploaded == 40 and result.listings == 2
        with pytest.raises(ValueError):
            ingest(client, tmp_path, unique_dir, workers=0)
        buffer = io.BytesIO(client.read(f"{unique_dir}/y.bin"))
        assert buffer.read() == b"y" * 30


def test_serve_in_process_prints_urls_and_stops(capsys):
    from seaweed_data import cli

    stop = threading.Event()
    stop.set()  # as if Ctrl-C came at once
    cluster = sd.LocalCluster(stop_grace=1.0)
    assert cli._serve(cluster, stop) == 0
    out = capsys.readouterr().out
    assert f"filer   {cluster.filer_url}" in out
    assert f"export SEAWEED_FILER={cluster.filer_url}" in out
    assert "volume0 http://127.0.0.1:" in out and out.rstrip().endswith("stopping ...")
    assert not cluster.running
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    assert main(["server", "--volumes", "0"]) == 1  # a bad option is reported, not raised
    assert "volumes must be a positive integer" in capsys.readouterr().err
    assert {sig: signal.getsignal(sig) for sig in before} == before  # handlers restored
