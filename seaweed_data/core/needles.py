"""Reading needles (chunks) straight from volume servers, with failover between replicas.

Each try has a short first-byte timeout (``Config.volume_timeout``): a replica that accepts
connections but never answers (a stopped process) costs at most that long before the next
replica is asked, and it is then tried last for ``Config.slow_server_ttl``. After every replica
failed, the volume is looked up again and the round repeats with backoff.
Range reads send ``Accept-Encoding: identity`` so a needle stored gzip-compressed is sliced
after decompression. Encrypted chunks (``cipher_key``) are fetched whole and decrypted.

On a cluster with a volume read key each request carries a JWT for its needle: signed here
with the key when ``security.toml`` has it; else, once a volume server asked for one, handed out
by the master (``/dir/lookup?read=yes``), as SeaweedFS's own clients do.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import Sequence

import aiohttp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..config import Config
from ..errors import CorruptDataError, NotFoundError, PermissionDeniedError, TransportError
from .entry import Chunk, Entry
from .http import RETRY_STATUSES, Http, Response
from .limiter import PriorityLimiter
from .metrics import Counters
from .security import VOLUME_READ
from .volumes import VolumeLocations

log = logging.getLogger(__name__)
PIPELINED_MAX_BYTES = 256 * 1024
"""Reads up to this size are pipelined; larger ones get a connection of their own."""

NONCE_BYTES = 12
GZIP_MAGIC = b"\x1f\x8b"


def small_and_plain(entry: Entry) -> bool:
    """Whether the file is one whole plain chunk (not encrypted, not a manifest) of at most
    :data:`PIPELINED_MAX_BYTES`: what :meth:`NeedleReader.fetch_whole` fetches, many at once."""
    if entry.content is not None or entry.remote or entry.is_dir or len(entry.chunks) != 1:
        return False
    chunk = entry.chunks[0]
    return (chunk.offset == 0 and chunk.size == entry.size
            and 0 < entry.size <= PIPELINED_MAX_BYTES
            and chunk.cipher_key is None and not chunk.is_chunk_manifest)


class ChunkMissingError(NotFoundError):
    """No replica has the needle: the file changed under us, or data was lost."""


class NeedleReader:
    """Reads byte ranges of chunks from the volume servers that hold them."""

    def __init__(self, http: Http, locations: VolumeLocations, config: Config,
                 counters: Counters) -> None:
        self._http = http
        self._locations = locations
        self._config = config
        self._counters = counters
        self._timeout = aiohttp.ClientTimeout(sock_connect=config.connect_timeout,
                                              sock_read=config.volume_timeout)
        self._limiters: dict[str, PriorityLimiter] = {}
        self._master_tokens = False
        """True once a volume server refused a read without a token and we have no key."""

    def _limiter(self, server: str) -> PriorityLimiter:
        """Requests in flight to one volume server are capped; demand reads go first."""
        limiter = self._limiters.get(server)
        if limiter is None:
            limiter = PriorityLimiter(self._config.per_server_concurrency)
            self._limiters[server] = limiter
        return limiter

    async def read(self, chunk: Chunk, start: int, stop: int, path: str) -> list[bytes]:
        """Bytes ``[start, stop)`` of the chunk's (decrypted, decompressed) data, in pieces
        as they came off the socket (join them once, with the rest of the read)."""
        if chunk.cipher_key is not None:
            whole = b"".join(await self._fetch(chunk, None, path))
            return [decrypt(whole, chunk, path)[start:stop]]
        if start == 0 and stop >= chunk.size:
            return await self._fetch(chunk, None, path)
        return await self._fetch(chunk, (start, stop), path)

    async def read_into(self, chunk: Chunk, start: int, stop: int, path: str,
                        into: memoryview) -> None:
        """Bytes ``[start, stop)`` of the chunk into ``into`` (``stop - start`` bytes long).
        A large plain read is received there directly (:mod:`.bulk`); others are copied."""
        whole = start == 0 and stop == chunk.size
        if (chunk.cipher_key is None and self._config.pipelining
                and stop - start > PIPELINED_MAX_BYTES and (whole or stop < chunk.size)):
            parts = await self._fetch(chunk, None if whole else (start, stop), path, into)
        else:
            parts = await self.read(chunk, start, stop, path)
        position = 0
        for part in parts:  # none when the answer went straight into ``into``
            into[position:position + len(part)] = part
            position += len(part)

    async def fetch_whole(self, chunks: Sequence[tuple[Chunk, str]]) -> list[bytes | None]:
        """Whole small plain chunks (``(chunk, path)``: not encrypted, at most
        :data:`PIPELINED_MAX_BYTES`), pipelined (``per_server_concurrency`` in flight per server
        at most): one try each at its volume's best
        replica, without the machinery of a :meth:`read` each (its coroutines, its limiter
        slot: ~14 µs of CPU per file more than a bare pipelined GET, in a microbenchmark).
        None for a chunk whose try went wrong in any way (an error, a status other than 200,
        a short body, no location): :meth:`read` it, with failover, retries and the real
        error; a failed try counts as a failover and puts its server last."""
        if self._master_tokens or not self._config.pipelining:
            return [None] * len(chunks)
        best: dict[str, str | None] = {}  # volume id -> its best replica
        by_server: dict[str, list[int]] = {}
        for i, (chunk, path) in enumerate(chunks):
            if chunk.volume_id not in best:
                best[chunk.volume_id] = await self._best_replica(chunk.volume_id, path)
            server = best[chunk.volume_id]
            if server is not None:
                by_server.setdefault(server, []).append(i)
        fetched = await asyncio.gather(*(
            self._fetch_from(server, [chunks[i][0] for i in indices])
            for server, indices in by_server.items()))
        out: list[bytes | None] = [None] * len(chunks)
        for indices, datas in zip(by_server.values(), fetched, strict=True):
            for i, data in zip(indices, datas, strict=True):
                out[i] = data
        self._counters.add("bytes_fetched", sum(len(data) for data in out if data))
        return out

    async def _best_replica(self, volume_id: str, path: str) -> str | None:
        try:
            servers = await self._locations.lookup(volume_id, path)
        except Exception:  # (NoMasterError too) read() meets it again, and decides
            return None
        return servers[0] if servers else None

    async def _fetch_from(self, server: str, chunks: list[Chunk]) -> list[bytes | None]:
        responses = await self._http.pipelined_get_many(
            server, [(f"/{chunk.file_id}", self._headers(chunk.file_id)) for chunk in chunks],
            kind="volume", timeout=self._config.volume_timeout,
            limit=self._config.per_server_concurrency)
        failed = responses.count(None)
        if failed:  # as read() does for a try that failed: another replica goes first
            log.info("volume server %s failed %d of %d pipelined reads; reading them again",
                     server, failed, len(chunks))
            self._locations.mark_bad(server)
            self._counters.add("failovers", failed)
        return [response.body if response is not None and response.status == 200
                and response.size == chunk.size else None
                for chunk, response in zip(chunks, responses, strict=True)]

    def _headers(self, fid: str) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity"}
        token = self._http.tokens.header(VOLUME_READ, fid)
        if token:
            headers["Authorization"] = token
        return headers

    async def _fetch(self, chunk: Chunk, span: tuple[int, int] | None, path: str,
                     into: memoryview | None = None) -> list[bytes]:
        headers = {"Accept-Encoding": "identity"}
        if span is not None:
            headers["Range"] = f"bytes={span[0]}-{span[1] - 1}"
        error: Exception | None = None
        for attempt in range(self._config.retries + 1):
            servers = await self._locations.lookup(chunk.volume_id, path)
            await self._authorize(headers, chunk.file_id, path)
            missing = 0
            for server in servers:
                try:
                    return await self._try(server, chunk, span, headers, path, into)
                except ChunkMissingError as exc:
                    missing, error = missing + 1, exc
                except TransportError as exc:
                    log.info("volume server %s failed for %s (%s); trying another replica",
                             server, path, exc)
                    self._locations.mark_bad(server)
                    self._counters.add("failovers")
                    error = exc
            self._locations.invalidate(chunk.volume_id)
            if missing == len(servers):
                break
            await asyncio.sleep(self._http.backoff(attempt))
        assert error is not None
        raise error

    async def _authorize(self, headers: dict[str, str], fid: str, path: str) -> None:
        """Put the read JWT of needle ``fid`` into ``headers`` (when reads need one)."""
        token = self._http.tokens.header(VOLUME_READ, fid)
        if token is None and self._master_tokens:
            token = await self._locations.read_token(fid, path)
        if token:
            headers["Authorization"] = token

    async def _learn_auth(self, headers: dict[str, str], fid: str, path: str) -> bool:
        """After a refusal: whether asking the master for a token is worth another try (not
        when we sent a token already)."""
        if "Authorization" in headers or self._http.tokens.has(VOLUME_READ):
            return False
        if not self._master_tokens:
            self._master_tokens = True
            log.info("volume servers want a read JWT and no volume read key is configured; "
                     "asking the master for one per needle")
        await self._authorize(headers, fid, path)
        return "Authorization" in headers

    async def _get(self, server: str, fid: str, headers: dict[str, str],
                   small: bool, into: memoryview | None) -> Response:
        async with self._limiter(server).slot():
            if into is not None:
                return await self._http.bulk_get(server, f"/{fid}", kind="volume",
                                                 headers=headers, into=into,
                                                 timeout=self._config.volume_timeout)
            if small and self._config.pipelining:
                return await self._http.pipelined_get(server, f"/{fid}", kind="volume",
                                                      headers=headers,
                                                      timeout=self._config.volume_timeout)
            return await self._http.attempt("GET", f"http://{server}/{fid}", kind="volume",
                                            headers=headers, timeout=self._timeout,
                                            stream=True)

    async def _try(self, server: str, chunk: Chunk, span: tuple[int, int] | None,
                   headers: dict[str, str], path: str,
                   into: memoryview | None) -> list[bytes]:
        """The answer's body in pieces; none when it went into ``into``."""
        url = f"http://{server}/{chunk.file_id}"
        small = (span[1] - span[0] if span else chunk.size) <= PIPELINED_MAX_BYTES
        response = await self._get(server, chunk.file_id, headers, small, into)
        if response.status in (401, 403) and await self._learn_auth(headers, chunk.file_id,
                                                                    path):
            response = await self._get(server, chunk.file_id, headers, small, into)
        self._check(response, chunk, url, path)
        received = response.size
        self._counters.add("bytes_fetched", received)
        if span is not None:
            if response.status == 200 and response.received is None:  # Range ignored
                response.parts = [response.body[span[0]:span[1]]]
            expected = span[1] - span[0]
        else:
            expected = chunk.size if chunk.cipher_key is None else received
        if response.size != expected:
            raise TransportError(f"GET {url}: {response.size} bytes for {path!r}, "
                                 f"expected {expected}")
        return response.parts

    def _check(self, response: Response, chunk: Chunk, url: str, path: str) -> None:
        status = response.status
        if status in (200, 206):
            return
        if status == 404:
            raise ChunkMissingError(path, f"chunk {chunk.file_id} is missing on {url}")
        if status in (401, 403):
            why = self._http.tokens.denial(VOLUME_READ)
            if self._master_tokens:
                why += "; the master handed out no read token that it accepts either"
            raise PermissionDeniedError(
                f"volume server refused to read {path!r} (HTTP {status}): {why}")
        if status in RETRY_STATUSES:
            raise TransportError(f"GET {url}: HTTP {status} for {path!r}")
        raise TransportError(f"GET {url}: unexpected HTTP {status} for {path!r}")


def decrypt(data: bytes, chunk: Chunk, path: str) -> bytes:
    """AES-256-GCM with the 12-byte nonce in front; then gunzip if stored compressed."""
    assert chunk.cipher_key is not None
    try:
        plain = AESGCM(chunk.cipher_key).decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
    except (InvalidTag, ValueError) as exc:
        raise CorruptDataError(f"cannot decrypt chunk {chunk.file_id} of {path!r}: "
                               f"{type(exc).__name__}", path=path, offset=chunk.offset) from None
    if chunk.is_compressed and plain.startswith(GZIP_MAGIC):
        plain = gzip.decompress(plain)
    return plain
