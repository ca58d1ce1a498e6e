"""Where volumes live: the master's ``/dir/lookup``, cached, with a memory of bad servers.

A lookup is cached for ``Config.location_ttl`` and invalidated when a read fails. Concurrent
lookups of one volume share one request. A server that failed or stalled is remembered for
``Config.slow_server_ttl`` and tried after the others; when the master cannot be reached, a
stale cached answer is better than none and is used.

:meth:`VolumeLocations.read_token` asks the master for the read JWT of one needle
(``/dir/lookup?fileId=...&read=yes``), for clients of a secured cluster that lack the volume
read key; the token is reused for half of the time it has left.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable

from lru import LRU

from ..config import Config
from ..errors import NotFoundError, ServerError, TransportError
from .http import Http
from .security import TOKEN_CACHE_ENTRIES, claims_of

log = logging.getLogger(__name__)

MasterSource = Callable[[], Awaitable[list[str]]]
UNDATED_TOKEN_SECONDS = 5.0
STALE_GRACE_S = 5.0
"""Last known locations, used while no master answers, are reused this long unasked."""
MASTER_RECOVERY_S = 60.0
"""After a master was unreachable, 'volume not found' is retried this long (it may just
not have heard from the volume servers yet)."""
"""How long a master's token without ``exp`` is reused."""


class NoMasterError(Exception):
    """No master is known: the caller reads through the filer instead."""


class VolumeLocations:
    """Volume id -> the volume servers holding it, best first."""

    def __init__(self, http: Http, masters: MasterSource, config: Config) -> None:
        self._http = http
        self._masters = masters
        self._config = config
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self._pending: dict[str, asyncio.Future[list[str]]] = {}
        self._bad_until: dict[str, float] = {}
        self._read_tokens: LRU[str, tuple[float, str | None]] = LRU(TOKEN_CACHE_ENTRIES)
        self._master_failed_at = -MASTER_RECOVERY_S

    async def lookup(self, volume_id: str, path: str = "") -> list[str]:
        """Servers (``host:port``) holding ``volume_id``, healthy ones first."""
        cached = self._cache.get(volume_id)
        if cached and time.monotonic() - cached[0] < self._config.location_ttl:
            return self.ordered(cached[1])
        pending = self._pending.get(volume_id)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(volume_id, path))
            self._pending[volume_id] = pending
            pending.add_done_callback(lambda f: self._settled(volume_id, f))
        return self.ordered(await asyncio.shield(pending))

    async def close(self) -> None:
        """Cancel the lookups in flight and wait for them to end (a pending task left to the
        garbage collector when the loop stops is reported as destroyed)."""
        pending = list(self._pending.values())
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _settled(self, volume_id: str, future: asyncio.Future[list[str]]) -> None:
        self._pending.pop(volume_id, None)
        if not future.cancelled():
            future.exception()  # retrieved even if every waiter was cancelled meanwhile

    async def _fetch(self, volume_id: str, path: str) -> list[str]:
        """Ask the masters; while none answers (a restart: a new leader can take ~15 s), keep
        asking until ``read_timeout``, or fall back to the last known locations at once."""
        masters = await self._masters()
        if not masters:
            raise NoMasterError()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.read_timeout
        for attempt in itertools.count():
            error = await self._ask_each(masters, volume_id, path)
            if error is None:
                return self._cache[volume_id][1]
            stale = self._cache.get(volume_id)
            if stale:
                log.warning("master unreachable (%s); using cached locations of volume %s",
                            error, volume_id)
                # keep using them for a moment instead of waiting on the master per read
                self._cache[volume_id] = (
                    time.monotonic() - self._config.location_ttl + STALE_GRACE_S, stale[1])
                return stale[1]
            if not self._worth_waiting(error) or loop.time() >= deadline:
                raise error
            await asyncio.sleep(min(self._http.backoff(attempt), deadline - loop.time()))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _ask_each(self, masters: list[str], volume_id: str,
                        path: str) -> Exception | None:
        """Ask the masters in turn; caches and returns None on the first answer, else
        returns the last error."""
        error: Exception | None = None
        for master in masters:
            try:
                servers = await self._ask(master, volume_id, path)
            except (TransportError, ServerError, NotFoundError) as exc:
                if isinstance(exc, TransportError):
                    self._master_failed_at = time.monotonic()
                error = exc
                continue
            self._cache[volume_id] = (time.monotonic(), servers)
            return None
        return error

    def _worth_waiting(self, error: Exception) -> bool:
        """A master that is down comes back; one that just came back does not know every
        volume until the volume servers' heartbeats reach it."""
        if not isinstance(error, NotFoundError):
            return True
        return time.monotonic() - self._master_failed_at < MASTER_RECOVERY_S

    async def _ask(self, master: str, volume_id: str, path: str) -> list[str]:
        """One try (:meth:`_fetch` retries, so that it sees why a master failed)."""
        url = f"{master}/dir/lookup"
        response = await self._http.request("GET", url, kind="master", retries=0,
                                            params={"volumeId": volume_id})
        try:
            body = json.loads(response.body or b"{}")
        except ValueError:
            body = {}
        locations = body.get("locations") if isinstance(body, dict) else None
        if response.status == 200 and locations:
            return [str(loc["url"]) for loc in locations]
        detail = body.get("error") if isinstance(body, dict) else None
        if response.status == 404 or (detail and "not found" in str(detail)):
            raise NotFoundError(path or volume_id, f"volume {volume_id} not found on the master")
        raise ServerError(f"master {master} lookup of volume {volume_id} for {path!r}: "
                          f"HTTP {response.status} {detail or ''}".rstrip(), response.status)

    async def read_token(self, fid: str, path: str = "") -> str | None:
        """``Bearer <token>`` for reading needle ``fid``, from the master; None when no
        master answers or it signs none (it has no read key)."""
        now = time.time()
        cached = self._read_tokens.get(fid)
        if cached is not None and now < cached[0]:
            return cached[1]
        params = {"volumeId": fid.split(",", 1)[0], "fileId": fid, "read": "yes"}
        for master in await self._masters():
            try:
                response = await self._http.request("GET", f"{master}/dir/lookup",
                                                    kind="master", params=params)
            except TransportError as exc:
                log.debug("no read token for %s from %s: %s", path or fid, master, exc)
                continue
            if response.status != 200:
                continue
            token = response.headers.get("Authorization") or None
            expires = claims_of(token).get("exp") if token else None
            left = expires - now if isinstance(expires, (int, float)) else None
            self._read_tokens[fid] = (now + (left / 2 if left else UNDATED_TOKEN_SECONDS), token)
            return token
        return None

    def ordered(self, servers: list[str]) -> list[str]:
        if not self._bad_until:
            return servers
        now = time.monotonic()
        return sorted(servers, key=lambda s: self._bad_until.get(s, 0.0) > now)

    def mark_bad(self, server: str) -> None:
        """Try ``server`` last for a while."""
        self._bad_until[server] = time.monotonic() + self._config.slow_server_ttl

    def invalidate(self, volume_id: str) -> None:
        entry = self._cache.get(volume_id)
        if entry:  # keep it as a stale fallback, but make the next lookup ask again
            self._cache[volume_id] = (float("-inf"), entry[1])
