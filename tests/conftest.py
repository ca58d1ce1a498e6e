"""Shared fixtures: real SeaweedFS clusters (started lazily, once per session) and unique paths.

- ``cluster``: one volume server, filer chunks of 1 MB (``-maxMB=1``), so multi-chunk files are
  a few MB.
- ``cluster_replicated``: three volume servers on three racks, replication ``010``.
- ``cluster_s3``: one volume server plus an S3 gateway.
- ``unique_dir``: a fresh filer directory such as ``/t/test_read_range-1a2b3c4d``.
- ``fault_proxy``: ``fault_proxy(url)`` starts a :class:`proxy.FaultProxy` in front of ``url``
  (closed after the test); ``from proxy import FaultProxy`` for the type.

A session cluster is only started by the first test that asks for it. After every test that used
one, it is healed (paused servers resumed, stopped ones started again) so that a fault test
cannot break the tests after it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest
from proxy import FaultProxy

from seaweed_data.core.cluster import LocalCluster

_SESSION_CLUSTERS = ("cluster", "cluster_replicated", "cluster_s3")


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """The default cluster: 1 volume server, replication 000, 1 MB filer chunks."""
    with LocalCluster(volumes=1, filer_args=("-maxMB=1",), stop_grace=1.0) as started:
        yield started


@pytest.fixture(scope="session")
def cluster_replicated() -> Iterator[LocalCluster]:
    """3 volume servers on racks rack0..rack2 with replication 010: two copies of everything."""
    with LocalCluster(volumes=3, replication="010", filer_args=("-maxMB=1",),
                      stop_grace=1.0) as started:
        yield started


@pytest.fixture(scope="session")
def cluster_s3() -> Iterator[LocalCluster]:
    """A cluster with an S3 gateway (``.s3_url``, ``.s3_access_key``, ``.s3_secret_key``)."""
    with LocalCluster(volumes=1, s3=True, stop_grace=1.0) as started:
        yield started


@pytest.fixture(autouse=True)
def _heal_session_clusters(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test, bring the session clusters it used back to full health."""
    yield
    for name in _SESSION_CLUSTERS:
        if name in request.fixturenames:
            used = request.getfixturevalue(name)
            if isinstance(used, LocalCluster) and used.running:
                used.heal()


@pytest.fixture
def unique_dir(request: pytest.FixtureRequest) -> str:
    """A filer directory no other test uses: ``/t/<test name>-<8 hex digits>`` (not created)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:60].strip("_.") or "test"
    return f"/t/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[str | tuple[str, int]], FaultProxy]]:
    """A factory of started fault-injecting proxies, all closed after the test."""
    started: list[FaultProxy] = []

    def make(target: str | tuple[str, int]) -> FaultProxy:
        proxy = FaultProxy(target).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.close()
