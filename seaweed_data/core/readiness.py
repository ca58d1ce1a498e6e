"""Blocking probes that tell whether a SeaweedFS server actually serves.

Each ``*_problem`` function returns None when the server is ready and otherwise a short reason
for an error message. They use plain ``urllib`` so that :class:`LocalCluster` needs neither the
event loop nor the client of this package.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

PROBE_TIMEOUT = 2.0


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes] | None:
    """(status, body) of a GET, or None when nothing answered."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT) as response:
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


def filer_problem(filer_url: str, accept_auth_errors: bool = False) -> str | None:
    """Does the filer list ``/`` as JSON? With ``accept_auth_errors`` a 401/403 (a filer that
    requires a JWT) counts as serving."""
    answer = http_get(f"{filer_url}/", {"Accept": "application/json"})
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
