"""Find the SeaweedFS master(s) behind a filer, without grpcio.

The filer answers ``filer_pb.SeaweedFiler/GetFilerConfiguration`` over gRPC with, among other
settings, the addresses of its masters. The call goes through :mod:`.grpc` (h2c without
grpcio, fork-safe); this module adds a tiny reader of the protobuf wire format.

Field numbers follow ``GetFilerConfigurationResponse`` in SeaweedFS's ``weed/pb/filer.proto``
(``repeated string masters = 1``, ...; see ``_CONFIG_FIELDS``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ServerError
from .grpc import authority, unary_call

log = logging.getLogger(__name__)

GRPC_PORT_OFFSET = 10000
GET_FILER_CONFIGURATION = "/filer_pb.SeaweedFiler/GetFilerConfiguration"
_MASK64 = (1 << 64) - 1


def default_grpc_port(http_port: int) -> int:
    """The gRPC port SeaweedFS uses when none is configured: the HTTP port + 10000."""
    return http_port + GRPC_PORT_OFFSET


def master_http_url(address: str) -> str:
    """``host:port`` or ``host:port.grpcPort`` (SeaweedFS's ServerAddress) -> ``http://host:port``."""
    host, sep, ports = address.rpartition(":")
    if not sep or not host or not ports:
        raise ServerError(f"malformed master address from filer: {address!r}")
    http_port = ports.split(".", 1)[0]
    if not http_port.isdigit():
        raise ServerError(f"malformed master address from filer: {address!r}")
    return f"http://{host}:{http_port}"


# --------------------------------------------------------------------------- protobuf wire format


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode the base-128 varint at ``buf[pos:]``; return ``(value, next_pos)``."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ServerError("malformed protobuf: truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise ServerError("malformed protobuf: varint longer than 10 bytes")


def iter_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field_number, wire_type, value)`` for each field of an encoded message.

    Varints and fixed-width fields come out as ``int``, length-delimited ones as ``bytes``.
    Groups (wire types 3 and 4, deprecated) and truncated input raise :class:`ServerError`.
    """
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ServerError("malformed protobuf: field number 0")
        value: int | bytes
        if wire_type == 0:
            value, pos = read_varint(buf, pos)
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            if pos + width > len(buf):
                raise ServerError("malformed protobuf: truncated fixed-width field")
            value = int.from_bytes(buf[pos : pos + width], "little")
            pos += width
        elif wire_type == 2:
            length, pos = read_varint(buf, pos)
            if pos + length > len(buf):
                raise ServerError("malformed protobuf: truncated length-delimited field")
            value = bytes(buf[pos : pos + length])
            pos += length
        else:
            raise ServerError(f"malformed protobuf: unsupported wire type {wire_type}")
        yield number, wire_type, value


def _as_int32(value: int) -> int:
    """Reinterpret a decoded varint as a protobuf ``int32`` (negatives are sign-extended)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


@dataclass(frozen=True)
class FilerConfiguration:
    """What a filer says about itself in ``GetFilerConfiguration`` (proto3 defaults if absent)."""

    masters: tuple[str, ...] = ()
    replication: str = ""
    collection: str = ""
    max_mb: int = 0
    dir_buckets: str = ""
    cipher: bool = False
    signature: int = 0
    metrics_address: str = ""
    metrics_interval_sec: int = 0
    version: str = ""
    cluster_id: str = ""
    filer_group: str = ""
    major_version: int = 0
    minor_version: int = 0

    @property
    def master_urls(self) -> tuple[str, ...]:
        """The masters' HTTP URLs (``http://host:port``), in order, without duplicates."""
        return tuple(dict.fromkeys(master_http_url(m) for m in self.masters))


# field number -> (attribute, expected wire type, kind)
_CONFIG_FIELDS: dict[int, tuple[str, int, str]] = {
    1: ("masters", 2, "repeated_str"),
    2: ("replication", 2, "str"),
    3: ("collection", 2, "str"),
    4: ("max_mb", 0, "uint32"),
    5: ("dir_buckets", 2, "str"),
    7: ("cipher", 0, "bool"),
    8: ("signature", 0, "int32"),
    9: ("metrics_address", 2, "str"),
    10: ("metrics_interval_sec", 0, "int32"),
    11: ("version", 2, "str"),
    12: ("cluster_id", 2, "str"),
    13: ("filer_group", 2, "str"),
    14: ("major_version", 0, "int32"),
    15: ("minor_version", 0, "int32"),
}


def _convert(kind: str, value: int | bytes) -> Any:
    """Turn a raw field value into the Python value of a ``_CONFIG_FIELDS`` kind."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ServerError("malformed protobuf: string field is not UTF-8") from exc
    if kind == "bool":
        return value != 0
    if kind == "int32":
        return _as_int32(value)
    return value & 0xFFFFFFFF


def parse_filer_configuration(message: bytes) -> FilerConfiguration:
    """Decode a ``GetFilerConfigurationResponse``; unknown fields are skipped."""
    values: dict[str, Any] = {}
    masters: list[str] = []
    for number, wire_type, raw in iter_fields(message):
        spec = _CONFIG_FIELDS.get(number)
        if spec is None:
            continue
        name, expected_wire_type, kind = spec
        if wire_type != expected_wire_type:
            raise ServerError(f"malformed protobuf: field {name} has wire type {wire_type}")
        if kind == "repeated_str":
            masters.append(_convert(kind, raw))
        else:
            values[name] = _convert(kind, raw)
    return FilerConfiguration(masters=tuple(masters), **values)


# --------------------------------------------------------------------------- public API


async def get_filer_configuration(host: str, grpc_port: int, *,
                                  timeout: float = 2.0) -> FilerConfiguration:
    """Ask the filer at ``host:grpc_port`` for its configuration (masters, replication, ...)."""
    message = await unary_call(host, grpc_port, GET_FILER_CONFIGURATION, b"", timeout=timeout)
    try:
        return parse_filer_configuration(message)
    except ServerError as exc:
        raise ServerError(f"bad GetFilerConfiguration reply from "
                          f"{authority(host.strip('[]'), grpc_port)}: {exc}") from exc


async def discover_masters(host: str, grpc_port: int, *, timeout: float = 2.0) -> list[str]:
    """The HTTP URLs of the masters the filer at ``host:grpc_port`` uses, e.g.
    ``["http://127.0.0.1:9333"]``, in the filer's order without duplicates."""
    config = await get_filer_configuration(host, grpc_port, timeout=timeout)
    if not config.master_urls:
        where = authority(host.strip("[]"), grpc_port)
        raise ServerError(f"filer at {where} reported no masters")
    log.debug("filer %s:%d reports masters %s", host, grpc_port, config.master_urls)
    return list(config.master_urls)


__all__ = [
    "GET_FILER_CONFIGURATION", "FilerConfiguration", "default_grpc_port", "discover_masters",
    "get_filer_configuration", "iter_fields", "master_http_url", "parse_filer_configuration",
    "read_varint",
]
