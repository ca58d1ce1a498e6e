"""Prometheus exposition of the counters and latency histograms (needs ``prometheus-client``).

Every counter ``name`` becomes ``seaweed_data_<name>_total``; every histogram ``name`` (such as
``volume_latency``) becomes ``seaweed_data_<name>_seconds`` with ``_bucket``, ``_count`` and
``_sum`` series. The source is the process (:data:`~seaweed_data.core.metrics.PROCESS`) unless
told otherwise, e.g. a :class:`~seaweed_data.core.job_metrics.JobMetrics` that adds up a job's
DataLoader workers.

>>> server = start_metrics_server(9108)              # doctest: +SKIP
>>> # curl http://127.0.0.1:9108/metrics
>>> server.close()                                   # doctest: +SKIP

Or, next to metrics of your own: ``register()`` into ``prometheus_client.REGISTRY``.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

try:
    from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "Prometheus export needs prometheus-client: pip install 'seaweed-data[prometheus]'"
    ) from exc


from .metrics import LATENCY_BOUNDS, PROCESS, MetricsSource

PREFIX = "seaweed_data"


class SeaweedCollector:
    """A prometheus-client collector reading a metrics source at every scrape."""

    def __init__(self, source: MetricsSource = PROCESS, *, prefix: str = PREFIX) -> None:
        self.source = source
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        """Counters first, then histograms; names sanitized to Prometheus' alphabet."""
        for name, value in sorted(self.source.snapshot().items()):
            yield CounterMetricFamily(f"{self.prefix}_{_sanitize(name)}",
                                      f"seaweed_data counter {name}", value=value)
        for name, stats in sorted(self.source.histograms().items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BOUNDS, float("inf")), stats["buckets"],
                                    strict=True):
                cumulative += count
                buckets.append((_le(bound), float(cumulative)))
            yield HistogramMetricFamily(
                f"{self.prefix}_{_sanitize(name)}_seconds",
                f"seaweed_data histogram {name} (seconds)",
                buckets=buckets, sum_value=stats["sum"])


def register(source: MetricsSource = PROCESS, *,
             registry: CollectorRegistry | None = None) -> SeaweedCollector:
    """Add a collector of ``source`` to ``registry`` (default: prometheus-client's global one).

    ``registry.unregister(collector)`` removes it again.
    """
    collector = SeaweedCollector(source)
    (REGISTRY if registry is None else registry).register(collector)
    return collector


class MetricsServer:
    """A running ``/metrics`` endpoint; :meth:`close` stops it (also a context manager)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.addr = str(server.server_address[0])
        self.port: int = server.server_port

    def __repr__(self) -> str:
        return f"MetricsServer({self.url!r})"

    @property
    def url(self) -> str:
        """The scrape URL, e.g. ``http://127.0.0.1:9108/metrics``."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving, release the port and wait for the server thread."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_metrics_server(port: int = 0, addr: str = "127.0.0.1", *,
                         source: MetricsSource = PROCESS,
                         registry: CollectorRegistry | None = None) -> MetricsServer:
    """Serve ``source`` at ``http://addr:port/metrics`` from a daemon thread.

    ``port=0`` picks a free port (see ``.port``). With ``registry`` the server exposes that
    registry, to which the collector is added; by default a private one holding only it.
    """
    registry = CollectorRegistry() if registry is None else registry
    register(source, registry=registry)

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True  # one thread per scrape, never joined
        address_family = _family(addr, port)

    server = make_server(addr, port, make_wsgi_app(registry), Server,
                         handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="seaweed-data-metrics-http",
                              daemon=True)
    thread.start()
    return MetricsServer(server, thread)


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr for every scrape."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def _family(addr: str, port: int) -> socket.AddressFamily:
    infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return infos[0][0]


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
