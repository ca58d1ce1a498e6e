"""SeaweedFS JWT: the signing keys of a ``security.toml``, and the tokens signed with them.

SeaweedFS guards its HTTP APIs with HS256 JSON web tokens (``weed/security/jwt.go``), sent as
``Authorization: Bearer <token>``:

- volume servers: a write (PUT, DELETE) needs a token signed with ``[jwt.signing] key``, a read
  one signed with ``[jwt.signing.read] key``; each carries ``{"fid": "<volume>,<key+cookie>"}``
  and is good for that one needle;
- the filer: a write (PUT, POST, DELETE) needs a token signed with ``[jwt.filer_signing] key``,
  a read (GET, HEAD) one signed with ``[jwt.filer_signing.read] key``, without claims but
  ``exp``.

A key that is missing means that kind of request is not guarded. The keys come from
``Config.security_toml``, else from the first ``security.toml`` on ``weed``'s own search path
(:data:`SEARCH_PATH`); an environment variable such as ``WEED_JWT_SIGNING_KEY`` wins over the
file, as it does for ``weed``. Tokens live ``expires_after_seconds`` (at least
:data:`MIN_LIFETIME`; :data:`DEFAULT_LIFETIME` when the file sets none) and are reused for half
of that, so a hot read path signs each needle's token once every few seconds.

Keys never leave this module: reprs and error messages name the file or variable, never a key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lru import LRU

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

SEARCH_PATH = (".", "~/.seaweedfs", "/usr/local/etc/seaweedfs", "/etc/seaweedfs")
"""Directories searched for ``security.toml``, in ``weed``'s order (``weed/util/config.go``)."""
DEFAULT_LIFETIME = 60
MIN_LIFETIME = 10
TOKEN_CACHE_ENTRIES = 65536

VOLUME_WRITE, VOLUME_READ = "volume_write", "volume_read"
FILER_WRITE, FILER_READ = "filer_write", "filer_read"
SECTIONS = {VOLUME_WRITE: "jwt.signing", VOLUME_READ: "jwt.signing.read",
            FILER_WRITE: "jwt.filer_signing", FILER_READ: "jwt.filer_signing.read"}
"""The ``security.toml`` section of each kind of key."""
DESCRIPTIONS = {VOLUME_WRITE: "volume write key", VOLUME_READ: "volume read key",
                FILER_WRITE: "filer write key", FILER_READ: "filer read key"}
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")


def env_name(section: str, option: str) -> str:
    """``jwt.signing.read`` + ``key`` -> ``WEED_JWT_SIGNING_READ_KEY`` (weed's viper naming)."""
    return "WEED_" + f"{section}.{option}".upper().replace(".", "_")


@dataclass(frozen=True)
class SigningKey:
    """One HS256 key and the lifetime of the tokens signed with it. Its repr hides the key."""

    secret: bytes = field(repr=False)
    lifetime: int
    origin: str
    """Where it came from: a file path or an environment variable's name."""

    def __repr__(self) -> str:
        return f"SigningKey(<redacted>, lifetime={self.lifetime}s, origin={self.origin!r})"


@dataclass(frozen=True, eq=False)
class SecurityKeys:
    """The keys found (by kind: :data:`VOLUME_WRITE`...) and the file they were read from."""

    keys: Mapping[str, SigningKey] = field(default_factory=dict)
    source: str | None = None
    """The ``security.toml`` read, None when none was found."""

    def __repr__(self) -> str:
        return f"SecurityKeys(source={self.source!r}, keys={sorted(self.keys)})"


def find_security_toml(configured: str | None) -> Path | None:
    """``configured`` (which must exist), else the first ``security.toml`` on
    :data:`SEARCH_PATH`, else None."""
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise ConfigError(f"Config.security_toml: no such file: {str(path)!r}")
        return path
    for directory in SEARCH_PATH:
        candidate = Path(directory).expanduser() / "security.toml"
        if candidate.is_file():
            return candidate
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        # tomllib's messages name a position, never a value.
        detail = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(f"cannot read security file {str(path)!r}: {detail}") from None


def _option(table: Mapping[str, Any], section: str, option: str) -> Any:
    node: Any = table
    for part in [*section.split("."), option]:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def load_keys(configured: str | None,
              environ: Mapping[str, str] | None = None) -> SecurityKeys:
    """The signing keys of ``configured`` or of the ``security.toml`` found on the search
    path, with ``WEED_JWT_*`` environment variables taking precedence."""
    env = os.environ if environ is None else environ
    path = find_security_toml(configured)
    table = _read_toml(path) if path is not None else {}
    keys: dict[str, SigningKey] = {}
    for kind, section in SECTIONS.items():
        name = env_name(section, "key")
        if env.get(name):
            secret, origin = env[name], name
        else:
            secret, origin = _option(table, section, "key"), str(path)
        if secret is None or secret == "":
            continue
        if not isinstance(secret, str):
            raise ConfigError(f"[{section}] key in {origin} must be a string")
        lifetime = env.get(env_name(section, "expires_after_seconds")) or _option(
            table, section, "expires_after_seconds")
        keys[kind] = SigningKey(secret.encode(), _lifetime(lifetime, section, origin), origin)
    if path is not None:
        log.debug("JWT keys %s from %s", sorted(keys), path)
    return SecurityKeys(keys, None if path is None else str(path))


def _lifetime(value: Any, section: str, origin: str) -> int:
    try:
        seconds = int(value or 0)
    except (TypeError, ValueError):
        raise ConfigError(
            f"[{section}] expires_after_seconds in {origin} must be an integer") from None
    return max(MIN_LIFETIME, seconds) if seconds > 0 else DEFAULT_LIFETIME


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def sign(claims: Mapping[str, Any], secret: bytes) -> str:
    """An HS256 JSON web token of ``claims``."""
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = _HEADER + b"." + payload
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + _b64(signature)).decode("ascii")


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a token (not verified), ``{}`` when it cannot be decoded."""
    try:
        payload = token.rsplit(" ", 1)[-1].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


class Tokens:
    """``Authorization`` header values for each kind of request, signed on demand and reused
    for half their lifetime (per needle for volume tokens). Use it from one thread."""

    def __init__(self, keys: SecurityKeys, clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self._clock = clock
        self._cache: LRU[tuple[str, str], tuple[float, str]] = LRU(TOKEN_CACHE_ENTRIES)
        self.minted = 0
        """Tokens signed so far (the rest came from the cache)."""

    def __repr__(self) -> str:
        return f"Tokens({self.keys!r})"

    def has(self, kind: str) -> bool:
        """Whether a key of ``kind`` is configured."""
        return kind in self.keys.keys

    def header(self, kind: str, fid: str = "") -> str | None:
        """``Bearer <token>`` for a request of ``kind`` (on needle ``fid`` for volume
        requests), or None without a key of that kind."""
        key = self.keys.keys.get(kind)
        if key is None:
            return None
        now = self._clock()
        cached = self._cache.get((kind, fid))
        if cached is not None and now < cached[0]:
            return cached[1]
        expires = int(now) + key.lifetime
        claims = {"fid": fid, "exp": expires} if fid else {"exp": expires}
        value = "Bearer " + sign(claims, key.secret)
        self._cache[(kind, fid)] = (expires - key.lifetime / 2, value)
        self.minted += 1
        return value

    def filer_header(self, method: str) -> dict[str, str]:
        """The ``Authorization`` header of a filer request (empty without the key)."""
        value = self.header(self.filer_kind(method))
        return {"Authorization": value} if value else {}

    def denial(self, kind: str) -> str:
        """Why a server may have refused a request of ``kind``: for error messages."""
        section, what = SECTIONS[kind], DESCRIPTIONS[kind]
        variable = env_name(section, "key")
        key = self.keys.keys.get(kind)
        if key is not None:
            return (f"it rejected our token signed with the {what} ([{section}] key from "
                    f"{key.origin}): the key differs from the cluster's, or the clocks do")
        if self.keys.source is None:
            searched = ", ".join(f"{d}/" for d in SEARCH_PATH)
            return (f"no {what} ([{section}] key) is configured: set Config.security_toml "
                    f"to the cluster's security.toml (none in {searched}) or {variable}")
        return (f"no {what} is configured: {self.keys.source} has no [{section}] key, "
                f"nor is {variable} set")

    @staticmethod
    def filer_kind(method: str) -> str:
        """:data:`FILER_READ` or :data:`FILER_WRITE`, by HTTP method."""
        return FILER_READ if method.upper() in READ_METHODS else FILER_WRITE
