"""Counters, latency histograms, a job's counters over fork/spawn workers, Prometheus export."""

import gc
import itertools
import json
import math
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import seaweed_data as sd
from seaweed_data.core.job_metrics import JobMetrics
from seaweed_data.core.metrics import (
    COUNTER_NAMES,
    LATENCY_BOUNDS,
    PROCESS,
    Counters,
    Histogram,
)
from seaweed_data.core.prometheus import register, start_metrics_server

PUBLIC = {"bytes_fetched", "requests", "cache_hits", "cache_misses", "prefetch_issued",
          "prefetch_used", "prefetch_wasted"}
NEW = {"cache_hits_memory", "cache_hits_disk", "prefetch_late", "pattern_sequential",
       "pattern_strided", "pattern_random"}


# -- counters and histograms -----------------------------------------------------------------

def test_snapshot_holds_every_standard_counter():
    assert set(COUNTER_NAMES) >= PUBLIC | NEW
    assert set(Counters().snapshot()) >= PUBLIC | NEW
    assert set(sd.stats()) >= PUBLIC | NEW
    assert all(v == 0 for v in Counters().snapshot().values())


def test_add_feeds_the_parent_and_reset_clears():
    parent = Counters()
    child = Counters(parent=parent)
    child.add("requests")
    child.add("bytes_fetched", 10)
    child.add_all({"cache_hits": 1, "cache_hits_disk": 1})
    child.add_all({"cache_hits": 1})
    child.observe("volume_latency", 0.01)
    assert child.get("requests") == 1 and parent.get("bytes_fetched") == 10
    assert child.get("cache_hits") == parent.get("cache_hits") == 2
    assert parent.get("cache_hits_disk") == 1
    assert parent.histograms()["volume_latency"]["count"] == 1
    child.reset()
    assert child.snapshot()["bytes_fetched"] == 0 and child.histograms()["volume_latency"][
        "count"] == 0
    assert parent.get("bytes_fetched") == 10  # the parent keeps its own


def test_counting_is_exact_from_many_threads():
    parent = Counters()
    counters = Counters(parent=parent)

    def work():
        for i in range(5000):
            counters.add("requests")
            counters.add("bytes_fetched", 3)
            counters.observe("volume_latency", (i % 7) * 1e-3)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for c in (counters, parent):
        assert c.get("requests") == 40_000 and c.get("bytes_fetched") == 120_000
        assert c.histograms()["volume_latency"]["count"] == 40_000
        assert sum(c.histograms()["volume_latency"]["buckets"]) == 40_000


def test_bucket_bounds_are_inclusive_and_log_spaced():
    assert LATENCY_BOUNDS[0] == 0.0001 and 30 <= LATENCY_BOUNDS[-1] < 40
    ratios = [b / a for a, b in itertools.pairwise(LATENCY_BOUNDS)]
    assert all(1.7 < r < 1.85 for r in ratios)
    h = Histogram()
    for seconds in (0.0, 0.0001, 0.00010001, 0.001, 100.0):
        h.observe(seconds)
    i_ms = LATENCY_BOUNDS.index(0.001)
    assert h.buckets[0] == 2 and h.buckets[1] == 1 and h.buckets[i_ms] == 1
    assert h.buckets[-1] == 1 and h.count == 5 and h.sum == pytest.approx(100.0012)


def _bucket(seconds):
    i = next((i for i, b in enumerate(LATENCY_BOUNDS) if seconds <= b), len(LATENCY_BOUNDS))
    return i


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=60, allow_nan=False), min_size=1,
                max_size=300))
def test_quantile_estimate_lies_in_the_bucket_of_the_true_quantile(samples):
    h = Histogram()
    for s in samples:
        h.observe(s)
    ordered = sorted(samples)
    stats = h.stats()
    assert stats["p50"] <= stats["p90"] <= stats["p99"]
    for q, key in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
        true = ordered[math.ceil(q * len(ordered)) - 1]
        i = _bucket(true)
        if i == len(LATENCY_BOUNDS):
            assert stats[key] == LATENCY_BOUNDS[-1]
        else:
            lower = LATENCY_BOUNDS[i - 1] if i else 0.0
            assert lower <= stats[key] <= LATENCY_BOUNDS[i], (q, true)


def test_empty_histogram_and_json_round_trip():
    assert Histogram().stats()["p99"] == 0.0
    h = Histogram()
    h.observe(0.25)
    back = Histogram.from_json(json.loads(json.dumps(h.to_json())))
    assert back.stats() == h.stats()
    for bad in ({"buckets": [1], "count": 1, "sum": 0.1}, [], {"buckets": h.buckets}):
        with pytest.raises(ValueError):
            Histogram.from_json(bad)


def test_pickling_carries_no_values_and_keeps_the_process_parent():
    assert pickle.loads(pickle.dumps(PROCESS)) is PROCESS
    counters = Counters(parent=PROCESS)
    counters.add("requests", 5)
    clone = pickle.loads(pickle.dumps(counters))
    assert clone.get("requests") == 0
    before = PROCESS.get("requests")
    clone.add("requests", 2)
    assert PROCESS.get("requests") == before + 2


def _own_after_fork(counters, conn):
    counters.add("requests", 3)
    conn.send((counters.own()[0], counters.snapshot()["requests"]))


def test_a_forked_child_knows_what_it_inherited():
    counters = Counters()
    counters.add("requests", 100)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_own_after_fork, args=(counters, child))
    proc.start()
    own, total = parent.recv()
    proc.join(30)
    assert own["requests"] == 3 and total == 103


def test_http_attempts_record_latency(cluster, unique_dir):
    with cluster.client(memory_cache_bytes=0) as client:
        client.write(f"{unique_dir}/a.bin", b"x" * 100_000)
        assert client.read(f"{unique_dir}/a.bin") == b"x" * 100_000
        stats, hists = client.stats(), client.counters.histograms()
    for kind in ("filer", "volume"):
        assert hists[f"{kind}_latency"]["count"] == stats[f"{kind}_requests"] >= 1
        assert 0 < hists[f"{kind}_latency"]["sum"] < 60
        assert 0 < hists[f"{kind}_latency"]["p50"] <= hists[f"{kind}_latency"]["p99"]
    assert sd.core.metrics.histograms()["volume_latency"]["count"] >= 1


# -- a job over processes --------------------------------------------------------------------

def _worker(job, amount, conn=None):
    job.attach()
    PROCESS.add("requests", amount)
    PROCESS.add("bytes_fetched", 100)
    PROCESS.observe("volume_latency", 0.01)
    if conn is not None:  # wait for the first timed report, say so, then wait to be killed
        while not any(n.endswith(".json") for n in os.listdir(job.path)):
            time.sleep(0.01)
        conn.send("reported")
        time.sleep(600)


def _start(method, job, amounts, **kwargs):
    ctx = multiprocessing.get_context(method)
    procs = [ctx.Process(target=_worker, args=(job, amount), kwargs=kwargs)
             for amount in amounts]
    for proc in procs:
        proc.start()
    return procs


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_job_sums_the_workers_and_the_main_process(method):
    PROCESS.add("requests", 1000)  # inherited by forked workers: must not count twice
    mine = Counters()
    mine.add("requests", 1)
    with JobMetrics.create(mine, interval=0.05) as job:
        for proc in _start(method, job, [1, 2, 3]):
            proc.join(60)
            assert proc.exitcode == 0  # exited without flushing: the exit hook reported
        totals = job.collect()
        assert totals["requests"] == 1 + 1 + 2 + 3
        assert totals["bytes_fetched"] == 300 and set(totals) >= PUBLIC
        assert job.histograms()["volume_latency"]["count"] == 3
        mine.add("requests", 10)  # the main process is read live
        assert job.collect()["requests"] == 17
    assert not os.path.exists(job.path)
    assert job.collect()["requests"] == 17  # the last totals outlive the directory


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_killed_worker_keeps_its_last_report(method):
    with JobMetrics.create(Counters(), interval=0.05) as job:
        ctx = multiprocessing.get_context(method)
        parent, child = ctx.Pipe()
        (proc,) = _start(method, job, [5], conn=child)
        assert parent.poll(60) and parent.recv() == "reported"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        assert proc.exitcode == -signal.SIGKILL
        assert job.collect()["requests"] == 5
        assert job.histograms()["volume_latency"]["count"] == 1


def test_attach_flush_detach_in_a_non_main_handle():
    with JobMetrics.create(Counters(), interval=60) as job:
        job.attach()  # main process: nothing to report
        assert os.listdir(job.path) == []
        other = pickle.loads(pickle.dumps(job))
        assert other.is_main  # same process, same creator
        worker = JobMetrics(job.path, interval=60, creator=-1)  # as if in another process
        counters = Counters()
        worker.attach(counters)
        worker.attach(counters)  # idempotent
        with pytest.raises(ValueError, match="other counters"):
            worker.attach(Counters())
        counters.add("requests", 4)
        assert worker.collect()["requests"] == 4  # its own values, live
        worker.flush()
        assert job.collect()["requests"] == 4
        counters.add("requests", 1)
        worker.detach()  # writes a last report
        assert job.collect()["requests"] == 5
        worker.attach(counters)  # again: the same report file, nothing counted twice
        counters.add("requests", 1)
        worker.close()  # not the main process: a detach
        assert job.collect()["requests"] == 6
        assert len([n for n in os.listdir(job.path) if n.endswith(".json")]) == 1


def test_unreadable_reports_are_ignored_and_reporting_stops_with_the_job():
    job = JobMetrics.create(Counters())
    with open(os.path.join(job.path, "bad.json"), "w") as bad:
        bad.write("{not json")
    with open(os.path.join(job.path, "worse.json"), "w") as bad:
        json.dump({"counters": {"requests": "many"}, "histograms": {}}, bad)
    with open(os.path.join(job.path, ".half.tmp"), "w") as half:
        half.write('{"counters": {"requests": 99}')
    assert job.collect()["requests"] == 0
    worker = JobMetrics(job.path, creator=-1)
    counters = Counters()
    worker.attach(counters)
    job.close()
    counters.add("requests")
    worker.flush()  # the directory is gone: no error, nothing recreated
    worker.detach()
    assert not os.path.exists(job.path)


def _close_in_child(job):
    job.close()
    del job
    gc.collect()


def test_only_the_main_process_removes_the_directory():
    with JobMetrics.create(Counters()) as job:
        ctx = multiprocessing.get_context("fork")
        proc = ctx.Process(target=_close_in_child, args=(job,))
        proc.start()
        proc.join(30)
        assert proc.exitcode == 0 and os.path.isdir(job.path)
    code = ("from seaweed_data.core.job_metrics import JobMetrics; "
            "print(JobMetrics.create().path)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out and not os.path.exists(out)  # removed at exit without close()


def test_bad_interval_is_refused():
    with pytest.raises(ValueError, match="interval"):
        JobMetrics("/nowhere", interval=0)


# -- Prometheus ------------------------------------------------------------------------------

def _scrape(url):
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, sample.labels.get("le"))] = sample.value
    return samples


def test_prometheus_endpoint_serves_counters_and_histograms():
    counters = Counters()
    counters.add("requests", 7)
    counters.add("bytes_fetched", 1234)
    for seconds in (0.0005, 0.002, 5.0, 100.0):
        counters.observe("volume_latency", seconds)
    with start_metrics_server(0, source=counters) as server:
        assert server.port > 0 and server.url.endswith(f":{server.port}/metrics")
        samples = _scrape(server.url)
        assert samples[("seaweed_data_requests_total", None)] == 7
        assert samples[("seaweed_data_bytes_fetched_total", None)] == 1234
        assert samples[("seaweed_data_cache_hits_memory_total", None)] == 0
        name = "seaweed_data_volume_latency_seconds"
        assert samples[(f"{name}_bucket", "0.001")] == 1
        assert samples[(f"{name}_bucket", "0.00316")] == 2
        assert samples[(f"{name}_bucket", "31.6")] == 3
        assert samples[(f"{name}_bucket", "+Inf")] == 4
        assert samples[(f"{name}_count", None)] == 4
        assert samples[(f"{name}_sum", None)] == pytest.approx(105.0025)
        assert samples[("seaweed_data_filer_latency_seconds_count", None)] == 0
        counters.add("requests", 3)  # read at every scrape
        assert _scrape(server.url)[("seaweed_data_requests_total", None)] == 10
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url, timeout=5)


def test_prometheus_serves_a_jobs_totals():
    with JobMetrics.create(Counters(), interval=0.05) as job:
        for proc in _start("fork", job, [2, 3]):
            proc.join(60)
        with start_metrics_server(source=job) as server:
            assert _scrape(server.url)[("seaweed_data_requests_total", None)] == 5


def test_register_into_a_registry_of_ones_own():
    registry = CollectorRegistry()
    counters = Counters()
    counters.add("prefetch_used", 2)
    collector = register(counters, registry=registry)
    text = generate_latest(registry).decode()
    assert "seaweed_data_prefetch_used_total 2.0" in text
    assert "seaweed_data_volume_latency_seconds_bucket" in text
    registry.unregister(collector)
    assert "seaweed_data" not in generate_latest(registry).decode()


def test_import_seaweed_data_does_not_import_prometheus_client():
    code = ("import sys, seaweed_data, seaweed_data.core.job_metrics; "
            "sys.exit('prometheus_client' in sys.modules)")
    subprocess.run([sys.executable, "-c", code], timeout=60, check=True)


def test_missing_prometheus_client_says_how_to_install_it():
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "try:\n    import seaweed_data.core.prometheus\n"
            "except ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "pip install 'seaweed-data[prometheus]'" in out
