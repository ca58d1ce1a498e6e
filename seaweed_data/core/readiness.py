"""Blocking probes that tell whether a SeaweedFS server actually serves, and the loop that
waits for them.

Each ``*_problem`` function returns None when the server is ready and otherwise a short reason
for an error message. They use plain ``urllib`` (HTTPS verified against the cluster's CA) so
that :class:`LocalCluster` needs neither the event loop nor the client of this package.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ClusterError

if TYPE_CHECKING:
    from .process import WeedProcess

PROBE_TIMEOUT = 2.0
POLL_SECONDS = 0.05
Problem = Callable[[], str | None]
"""A probe: None when what it checks holds, else the reason it does not."""


def wait_until(what: str, problem: Problem, deadline: float, watched: Sequence[WeedProcess],
               blame: WeedProcess) -> None:
    """Poll ``problem`` until it returns None. Fail at once if a process in ``watched``
    exited, and at ``deadline`` (``time.monotonic()``) with the end of ``blame``'s log."""
    while True:
        for proc in watched:
            if proc.popen is not None and proc.popen.poll() is not None:
                raise ClusterError(
                    f"weed {proc.name} exited with status {proc.popen.returncode} while "
                    f"waiting until {what}; the end of its log:\n{proc.log_tail()}")
        reason = problem()
        if reason is None:
            return
        if time.monotonic() >= deadline:
            raise ClusterError(f"timed out waiting until {what} ({reason}); "
                               f"the end of the {blame.name} log:\n{blame.log_tail()}")
        time.sleep(POLL_SECONDS)


def http_get(url: str, headers: dict[str, str] | None = None,
             ca_file: Path | None = None) -> tuple[int, bytes] | None:
    """(status, body) of a GET, or None when nothing answered. An ``https://`` server must
    present a certificate of ``ca_file`` (default: the system's CAs)."""
    request = urllib.request.Request(url, headers=headers or {})
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT,
                                    context=context) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read()
    except (OSError, ValueError):
        return None


def get_json(url: str) -> Any:
    """The JSON body of a 200 answer, or None."""
    answer = http_get(url)
    if answer is None or answer[0] != 200:
        return None
    try:
        return json.loads(answer[1])
    except ValueError:
        return None


def leader_problem(master_url: str) -> str | None:
    """Does the master know a leader (itself, in a single-master cluster)?"""
    status = get_json(f"{master_url}/cluster/status")
    if not isinstance(status, dict):
        return "the master does not answer /cluster/status"
    return None if status.get("IsLeader") or status.get("Leader") else "no leader elected yet"


def registered_volume_urls(master_url: str) -> list[str]:
    """``http://host:port`` of every volume server in the master's topology, sorted."""
    status = get_json(f"{master_url}/dir/status")
    topology = status.get("Topology") if isinstance(status, dict) else None
    urls: list[str] = []
    for dc in (topology or {}).get("DataCenters") or []:
        for rack in dc.get("Racks") or []:
            urls += [f"http://{node['Url']}" for node in rack.get("DataNodes") or []]
    return sorted(urls)


def registration_problem(master_url: str, expected: Iterable[str]) -> str | None:
    """Are all ``expected`` volume servers registered with the master?"""
    missing = sorted(set(expected) - set(registered_volume_urls(master_url)))
    return f"not registered yet: {', '.join(missing)}" if missing else None


def assign_problem(master_url: str) -> str | None:
    """Does ``/dir/assign`` hand out a file id (writable volumes exist or can grow)?"""
    answer = get_json(f"{master_url}/dir/assign")
    if isinstance(answer, dict) and answer.get("fid"):
        return None
    detail = answer.get("error") if isinstance(answer, dict) else "no answer"
    return f"/dir/assign: {detail}"


def filer_problem(filer_url: str, accept_auth_errors: bool = False,
                  ca_file: Path | None = None) -> str | None:
    """Does the filer list ``/`` as JSON? With ``accept_auth_errors`` a 401/403 (a filer that
    requires a JWT) counts as serving. ``ca_file`` signed an HTTPS filer's certificate."""
    answer = http_get(f"{filer_url}/", {"Accept": "application/json"}, ca_file)
    if answer is None:
        return "the filer does not answer"
    ok = {200, 401, 403} if accept_auth_errors else {200}
    return None if answer[0] in ok else f"GET / answered {answer[0]}"


def s3_problem(s3_url: str) -> str | None:
    """Does the S3 gateway answer ``GET /`` (list buckets) without a server error?"""
    answer = http_get(f"{s3_url}/")
    if answer is None:
        return "the S3 gateway does not answer"
    return None if answer[0] < 500 else f"GET / answered {answer[0]}"
