"""The filer's HTTP API: metadata, listing, upload, delete, rename, and reads through it.

On a filer guarded by JWT every request carries ``Authorization: Bearer <token>``, signed with
the filer read key (GET, HEAD) or write key (PUT, POST, DELETE) of :mod:`.security`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ..config import Config
from ..errors import NotDirectoryError, NotFoundError, PermissionDeniedError, ServerError
from .entry import Entry, parse_entry, parse_listing
from .http import Http, Response
from .location import quote_path

JSON = {"Accept": "application/json"}


def raise_for_status(response: Response, action: str, path: str,
                     ok: tuple[int, ...] = (200, 201, 204, 206), *,
                     denied: str | None = None) -> None:
    """Map a filer status to our errors; ``action`` says what we were doing, ``denied`` why
    a 401/403 may have happened (:meth:`.security.Tokens.denial`)."""
    status = response.status
    if status in ok:
        return
    if status == 404:
        raise NotFoundError(path)
    if status in (401, 403):
        why = denied or ("a filer JWT key (security.toml [jwt.filer_signing] or "
                         "[jwt.filer_signing.read]) is missing or wrong")
        raise PermissionDeniedError(f"filer refused {action} {path!r} (HTTP {status}): {why}")
    text = response.body[:200].decode("utf-8", "replace").strip()
    raise ServerError(f"filer error while {action} {path!r}: HTTP {status} {text}".rstrip(),
                      status)


class Filer:
    """One filer, addressed by its base URL (``http://host:port``)."""

    def __init__(self, base: str, http: Http, config: Config) -> None:
        self.base = base
        self._http = http
        self._config = config

    def url(self, path: str) -> str:
        return self.base + quote_path(path)

    def auth(self, method: str) -> dict[str, str]:
        """The ``Authorization`` header a request of ``method`` needs; empty without a key."""
        return self._http.tokens.filer_header(method)

    def check(self, response: Response, method: str, action: str, path: str,
              ok: tuple[int, ...] = (200, 201, 204, 206)) -> None:
        """:func:`raise_for_status`, explaining a refusal by the key a ``method`` needs."""
        if response.status in (401, 403):
            denied = self._http.tokens.denial(self._http.tokens.filer_kind(method))
            raise_for_status(response, action, path, ok, denied=denied)
        raise_for_status(response, action, path, ok)

    async def _request(self, method: str, path: str, action: str, *,
                       suffix: str = "", ok: tuple[int, ...] = (200, 201, 204, 206),
                       headers: Mapping[str, str] | None = None, **kwargs: Any) -> Response:
        headers = {**(headers or {}), **self.auth(method)}
        response = await self._http.request(method, self.url(path) + suffix, kind="filer",
                                            headers=headers, **kwargs)
        self.check(response, method, action, path, ok)
        return response

    async def entry(self, path: str, *, resolve_manifest: bool = False) -> Entry:
        """The entry at ``path`` with its chunk list."""
        params = {"metadata": "true"}
        if resolve_manifest:
            params["resolveManifest"] = "true"
        response = await self._request("GET", path, "reading metadata of", params=params,
                                       headers=JSON)
        return parse_entry(_json(response, path), path)

    async def list_page(self, path: str, last: str = "",
                        limit: int | None = None) -> tuple[list[Entry], str, bool]:
        """One page of a directory: (entries, last file name, more to come)."""
        params = {"limit": str(limit or self._config.list_page_size)}
        if last:
            params["lastFileName"] = last
        suffix = "" if path == "/" else "/"
        response = await self._request("GET", path, "listing", suffix=suffix, params=params,
                                       headers=JSON)
        if not response.headers.get("Content-Type", "").startswith("application/json"):
            raise NotDirectoryError(f"Not a directory: {path!r}")
        return parse_listing(_json(response, path), path)

    async def list_all(self, path: str) -> AsyncIterator[Entry]:
        """Every entry of a directory, page after page (``lastFileName`` pagination)."""
        last, more = "", True
        while more:
            entries, last, more = await self.list_page(path, last)
            for entry in entries:
                yield entry

    async def read(self, path: str, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` through the filer (the fallback path)."""
        if stop <= start:
            return b""
        headers = {"Range": f"bytes={start}-{stop - 1}", "Accept-Encoding": "identity"}
        response = await self._request("GET", path, "reading", headers=headers)
        body = response.body
        self._http.counters.add("bytes_fetched", len(body))
        if response.status == 200:
            body = body[start:stop]
        return body

    async def put(self, path: str, data: bytes, *, mime: str = "application/octet-stream",
                  params: Mapping[str, str] | None = None) -> None:
        await self._request("PUT", path, "writing", data=data, params=params,
                            headers={"Content-Type": mime})

    async def delete(self, path: str, *, recursive: bool = False) -> None:
        params = {"recursive": "true", "ignoreRecursiveError": "false"} if recursive else None
        await self._request("DELETE", path, "deleting", params=params)

    async def move(self, source: str, target: str) -> None:
        """Rename ``source`` to ``target``, replacing it (one filer operation)."""
        await self._request("POST", target, "renaming to", params={"mv.from": source})


def _json(response: Response, path: str) -> dict[str, Any]:
    try:
        body = json.loads(response.body)
    except ValueError:
        raise ServerError(f"filer returned malformed JSON for {path!r}") from None
    if not isinstance(body, dict):
        raise ServerError(f"filer returned unexpected JSON for {path!r}")
    return body
