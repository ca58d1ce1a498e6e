"""What a shard holds: ``.pt``/``.pth`` (``torch.save`` of a list, a tuple or a dict of
equal-length tensors) or TFRecord (``.tfrecord``, ``.tfrecords``, ``.tfrec``; ``.gz`` for GZIP,
``.zz`` for ZLIB), and how its samples come out of the bytes.

Defects of the data are :class:`~seaweed_data.errors.CorruptDataError` naming the shard (and
the record offset for TFRecord). A skip policy hands them to a ``report`` callback instead:
``report("sample", error)`` for one record left out, ``report("shard", error)`` for a shard (or
the rest of it) that cannot be read.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..core.client import Client
from ..core.location import has_glob, parse_location
from ..core.records import Readable, iter_records
from ..errors import CorruptDataError, InvalidLocationError

Report = Callable[[Literal["sample", "shard"], CorruptDataError], None]

PT_SUFFIXES = (".pt", ".pth")
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec")
COMPRESSED_SUFFIXES = {".gz": "GZIP", ".zz": "ZLIB", ".zlib": "ZLIB"}


@dataclass(frozen=True)
class ShardFormat:
    """``kind`` is ``"pt"`` or ``"tfrecord"``; ``compression`` applies to TFRecord."""

    kind: Literal["pt", "tfrecord"]
    compression: str = ""


def shard_format(path: str, compression: str | None = None) -> ShardFormat:
    """The format of the shard at ``path``, from its name; ValueError if unsupported.

    ``compression`` (``"GZIP"``, ``"ZLIB"`` or ``""``), when given, overrides what the name
    says for TFRecord shards.
    """
    name = path.lower()
    if name.endswith(PT_SUFFIXES):
        return ShardFormat("pt")
    found = ""
    for suffix, kind in COMPRESSED_SUFFIXES.items():
        if name.endswith(suffix):
            name, found = name[: -len(suffix)], kind
    if name.endswith(TFRECORD_SUFFIXES):
        return ShardFormat("tfrecord", found if compression is None else compression.upper())
    raise ValueError(
        f"unsupported shard {path!r}: expected {', '.join(PT_SUFFIXES + TFRECORD_SUFFIXES)}"
        " (TFRecord optionally .gz or .zz)")


def resolve_paths(paths: str | Sequence[str], client: Client | None,
                  compression: str | None) -> tuple[str, list[str]]:
    """The filer and the filer paths of ``paths`` (locations or globs, all on one filer: the
    client's, else the one the full locations name, else the default); no I/O. Literal paths
    must name shards of a supported format."""
    items = [paths] if isinstance(paths, str) else list(paths)
    if not items:
        raise ValueError("ShardDataset needs at least one path or glob")
    filer = client.filer if client is not None else None
    if filer is None:
        full = [parse_location(p).filer for p in items if isinstance(p, str) and "://" in p]
        filer = full[0] if full else None
    locations = [parse_location(p, filer) for p in items]
    filers = {loc.filer for loc in locations}
    if len(filers) > 1 or (filer is not None and filers != {filer}):
        raise InvalidLocationError(f"all shards must be on one filer, got {sorted(filers)}")
    for loc in locations:
        if not has_glob(loc.path):
            shard_format(loc.path, compression)
    return locations[0].filer, [loc.path for loc in locations]


class Rows(Sequence[dict[str, Any]]):
    """The samples of a dict of equal-length tensors: row ``i`` is ``{key: value[i]}``."""

    def __init__(self, columns: Mapping[str, Any], length: int) -> None:
        self._columns = dict(columns)
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        if not -self._length <= index < self._length:
            raise IndexError(index)
        return {key: column[index] for key, column in self._columns.items()}


def load_pt(data: bytes, path: str, *, weights_only: bool = True) -> Sequence[Any]:
    """The samples of a ``.pt`` shard's bytes (loaded to CPU memory).

    A list or tuple is its own samples; a dict of equal-length tensors (or sequences) has one
    sample per row. Truncated or garbled bytes are :class:`CorruptDataError`; an object that
    ``weights_only`` refuses to unpickle stays a :class:`pickle.UnpicklingError` (a choice of
    the user, not a defect of the data), with the path added.
    """
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        if _refused(exc):
            raise pickle.UnpicklingError(f"{path}: {exc}") from exc
        raise _unreadable(path, data, exc) from exc
    except Exception as exc:  # torch reports a truncated zip as RuntimeError, others vary
        raise _unreadable(path, data, exc) from exc
    return _samples_of(loaded, path)


def _refused(exc: pickle.UnpicklingError) -> bool:
    """Whether ``weights_only`` refused a well-formed pickle (a class it does not allow), as
    opposed to bytes that are no pickle at all: garbage fails on an opcode ("Unsupported
    operand"), which the weights-only unpickler reports in the same words otherwise."""
    message = str(exc)
    return "Weights only load failed" in message and "Unsupported operand" not in message


def _unreadable(path: str, data: bytes, exc: BaseException) -> CorruptDataError:
    return CorruptDataError(f"cannot load .pt shard {path} ({len(data)} bytes; truncated or "
                            f"not a torch.save file?): {exc}", path=path)


def _samples_of(loaded: object, path: str) -> Sequence[Any]:
    if isinstance(loaded, list | tuple):
        return loaded
    if isinstance(loaded, dict) and loaded:
        lengths = {key: _column_length(value) for key, value in loaded.items()}
        if None not in lengths.values() and len(set(lengths.values())) == 1:
            return Rows(loaded, next(iter(lengths.values())) or 0)
        raise CorruptDataError(f".pt shard {path}: a dict shard needs columns of equal length "
                               f"(tensors with a first dimension), got lengths {lengths}",
                               path=path)
    raise CorruptDataError(f".pt shard {path} holds a {type(loaded).__name__}; expected a list, "
                           "a tuple or a non-empty dict of equal-length tensors", path=path)


def _column_length(value: object) -> int | None:
    if isinstance(value, torch.Tensor):
        return int(value.shape[0]) if value.dim() > 0 else None
    return len(value) if isinstance(value, Sequence) else None


def tfrecord_samples(stream: Readable, path: str, compression: str,
                     report: Report | None) -> Iterator[bytes]:
    """The records of a TFRecord shard. Without ``report`` any defect raises; with it, a record
    whose data fails its CRC is reported and left out, and a framing defect (length CRC,
    truncation, broken compression) reports the rest of the shard and ends it."""
    if report is None:
        yield from iter_records(stream, path=path, compression=compression)
        return
    records = iter_records(stream, path=path, compression=compression,
                           on_bad_data=lambda error: report("sample", error))
    try:
        yield from records
    except CorruptDataError as error:
        report("shard", error)
