"""HTTP on aiohttp: one session per client (created inside the loop), timeouts, and retries.

:meth:`Http.request` retries transient failures (connection errors, resets, truncated bodies,
timeouts, 408/429/5xx) with exponential backoff and full jitter, honouring ``Retry-After``. It
returns any other status to the caller, who knows what a 404 means. :meth:`Http.attempt` is
a single try with the same error translation, for callers that fail over instead of retrying.
An HTTPS server whose certificate cannot be verified raises :class:`TLSError` at once (no
retries: it will not get better). :attr:`Http.tokens` signs the JWTs of a secured cluster.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ..config import Config
from ..errors import RequestTimeoutError, TLSError, TransportError, UnreachableError
from .bulk import BulkGets
from .metrics import Counters
from .pipeline import Answer, Pipelines, close_inherited_socket
from .security import Tokens, load_keys

log = logging.getLogger(__name__)

_ABANDONED: list[object] = []  # sessions inherited through fork; see abandon_after_fork
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 10.0


@dataclass
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    parts: list[bytes]
    """The body as received; joined lazily, so large bodies are copied once, at the end."""
    received: int | None = None
    """Bytes of a body received into the caller's buffer (:meth:`Http.bulk_get`; ``parts``
    is then empty)."""

    @property
    def body(self) -> bytes:
        if len(self.parts) != 1:
            self.parts = [b"".join(self.parts)]
        return self.parts[0]

    @property
    def size(self) -> int:
        return self.received if self.received is not None else sum(map(len, self.parts))


def where(url: str) -> str:
    """The URL without its query, safe to put into messages and logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class Http:
    """An aiohttp session plus the retry policy of :class:`~seaweed_data.Config`."""

    def __init__(self, config: Config, counters: Counters) -> None:
        self.config = config
        self.counters = counters
        self._session: aiohttp.ClientSession | None = None
        self._tokens: Tokens | None = None
        self.pipelines = Pipelines(config.connect_timeout)
        self.bulk = BulkGets(config.connect_timeout)

    def __repr__(self) -> str:
        return f"Http(verify_tls={self.config.verify_tls}, ca_file={self.config.ca_file!r})"

    @property
    def tokens(self) -> Tokens:
        """The JWT signer of ``Config.security_toml`` (or of the ``security.toml`` found on
        SeaweedFS's search path); loaded on first use, raising :class:`ConfigError` for a
        missing or malformed file."""
        if self._tokens is None:
            self._tokens = Tokens(load_keys(self.config.security_toml))
        return self._tokens

    def session(self) -> aiohttp.ClientSession:
        """The session; created on first use, inside the running loop."""
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.config.max_connections,
                limit_per_host=self.config.max_connections,
                ssl=self._ssl_context(),
                enable_cleanup_closed=False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, read_bufsize=1 << 20,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(
                    sock_connect=self.config.connect_timeout,
                    sock_read=self.config.read_timeout),
            )
        return self._session

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if not self.config.verify_tls:
            return False
        if self.config.ca_file:
            return ssl.create_default_context(cafile=self.config.ca_file)
        return True

    def abandon_after_fork(self) -> None:
        """In a forked child: drop the parent's session without running its loop.

        The pooled sockets are copies of the parent's; we close our copies of their file
        descriptors and keep the objects alive forever, so that no finalizer ever touches
        them (or the parent's event loop) again.
        """
        self.pipelines.abandon_after_fork(_ABANDONED)
        self.bulk.abandon_after_fork(_ABANDONED)
        session, self._session = self._session, None
        if session is None:
            return
        _ABANDONED.append(session)
        connector = session.connector
        pools = getattr(connector, "_conns", None) or {}
        protocols = [p for conns in pools.values() for p, _ in conns]
        protocols += list(getattr(connector, "_acquired", ()))
        for protocol in protocols:
            close_inherited_socket(getattr(protocol, "transport", None))

    async def close(self) -> None:
        await self.pipelines.close()
        await self.bulk.close()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def backoff(self, attempt: int) -> float:
        cap = min(self.config.backoff_max, self.config.backoff_base * (2**attempt))
        return random.uniform(cap / 2, cap)

    async def request(self, method: str, url: str, *, kind: str, retries: int | None = None,
                      **kwargs: Any) -> Response:
        """Send with retries; returns the final response (any non-transient status)."""
        retries = self.config.retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                response = await self.attempt(method, url, kind=kind, **kwargs)
                if response.status not in RETRY_STATUSES:
                    return response
                if attempt == retries:
                    return response
                delay = retry_after(response.headers) or self.backoff(attempt)
                log.debug("%s %s -> %d, retry in %.2fs", method, where(url), response.status,
                          delay)
            except TransportError as exc:
                if attempt == retries or isinstance(exc, TLSError):
                    raise
                delay = self.backoff(attempt)
                log.debug("%s %s failed (%s), retry in %.2fs", method, where(url), exc, delay)
            self.counters.add("retries")
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def attempt(self, method: str, url: str, *, kind: str,
                      headers: Mapping[str, str] | None = None,
                      timeout: aiohttp.ClientTimeout | None = None, stream: bool = False,
                      **kwargs: Any) -> Response:
        """One try; network failures become :class:`TransportError` subclasses.

        ``stream=True`` keeps the body as the pieces the socket delivered (no join).
        """
        self.counters.add("requests")
        self.counters.add(f"{kind}_requests")
        if timeout is not None:
            kwargs["timeout"] = timeout
        started = time.perf_counter()
        try:
            async with self.session().request(method, URL(url, encoded=True), headers=headers,
                                              **kwargs) as resp:
                if stream and resp.status in (200, 206):
                    parts = [part async for part, _ in resp.content.iter_chunks()]
                else:
                    parts = [await resp.read()]
                self.counters.observe(f"{kind}_latency", time.perf_counter() - started)
                return Response(resp.status, resp.headers, parts)
        except asyncio.TimeoutError as exc:
            raise RequestTimeoutError(
                f"{method} {where(url)}: no answer in time") from exc
        except aiohttp.ClientSSLError as exc:
            raise tls_error(method, url, exc) from None
        except aiohttp.ClientConnectorError as exc:
            raise UnreachableError(
                f"{method} {where(url)}: cannot connect to {exc.host}:{exc.port} "
                f"({exc.os_error.strerror or exc.os_error})") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(
                f"{method} {where(url)}: {type(exc).__name__}: {exc}") from None


    async def pipelined_get(self, server: str, target: str, *, kind: str,
                            headers: dict[str, str], timeout: float) -> Response:
        """One GET of a small body through :class:`Pipelines` (plain HTTP only)."""
        self.counters.add("requests")
        self.counters.add(f"{kind}_requests")
        started = time.perf_counter()
        answer = await self.pipelines.get(server, target, headers, timeout)
        self.counters.observe(f"{kind}_latency", time.perf_counter() - started)
        return Response(answer.status, CIMultiDictProxy(answer.headers), [answer.body])

    async def pipelined_get_many(self, server: str,
                                 requests: Sequence[tuple[str, dict[str, str]]], *, kind: str,
                                 timeout: float, limit: int) -> list[Response | None]:
        """:meth:`pipelined_get` of each ``(target, headers)`` of ``requests``, ``limit`` in
        flight at most: a response each, or None where the request failed (the caller reads
        it again)."""
        self.counters.add_all({"requests": len(requests), f"{kind}_requests": len(requests)})
        started = time.perf_counter()
        answers = await self.pipelines.get_many(server, requests, timeout, limit)
        self.counters.observe_all(f"{kind}_latency", [a.at - started for a in answers
                                                      if isinstance(a, Answer)])
        return [Response(a.status, CIMultiDictProxy(a.headers), [a.body])
                if isinstance(a, Answer) else None for a in answers]

    async def bulk_get(self, server: str, target: str, *, kind: str, headers: dict[str, str],
                       timeout: float, into: memoryview) -> Response:
        """One GET of a large body through :class:`BulkGets` (plain HTTP only): a 200/206
        body of ``len(into)`` bytes goes into ``into`` (``received`` set, no ``parts``)."""
        self.counters.add("requests")
        self.counters.add(f"{kind}_requests")
        started = time.perf_counter()
        answer = await self.bulk.get(server, target, headers, timeout, into)
        self.counters.observe(f"{kind}_latency", time.perf_counter() - started)
        headers_proxy = CIMultiDictProxy(answer.headers)
        if answer.body is None:
            return Response(answer.status, headers_proxy, [], received=len(into))
        return Response(answer.status, headers_proxy, [answer.body])


def tls_error(method: str, url: str, exc: aiohttp.ClientSSLError) -> TLSError:
    """A :class:`TLSError` that says how to make the server's certificate trusted."""
    cause = exc.certificate_error if isinstance(
        exc, aiohttp.ClientConnectorCertificateError) else exc.os_error
    reason = getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or cause
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return TLSError(
            f"{method} {where(url)}: the server's TLS certificate is not trusted ({reason}); "
            "set Config.ca_file to the PEM file of its CA (or verify_tls=False to skip the "
            "check)")
    return TLSError(f"{method} {where(url)}: TLS handshake with {exc.host}:{exc.port} "
                    f"failed ({reason})")


def retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value)))
    except ValueError:
        return None
