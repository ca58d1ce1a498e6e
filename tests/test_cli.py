"""The seaweed-data command against a real SeaweedFS."""

import signal
import subprocess
import sys
import time

import pytest

from seaweed_data.cli import main


def test_demo_prints_the_table_on_a_local_cluster(capsys):
    assert main(["demo", "--files", "40", "--big-size", "2MiB", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "starting a local SeaweedFS" in out
    for reader in ("naive GET per file via filer", "Client.read_many", "Client.read",
                   "local disk"):
        assert reader in out
    assert "volume_requests=" in out


def test_demo_on_an_existing_filer(cluster, capsys):
    assert main(["demo", "--filer", cluster.filer_url, "--files", "20", "--big-size", "1MiB",
                 "--rounds", "1"]) == 0
    assert "Client.read_many" in capsys.readouterr().out


def test_server_runs_until_terminated():
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
        assert any(line.startswith("filer   http://127.0.0.1:") for line in lines), lines
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--file-size", "lots"])
