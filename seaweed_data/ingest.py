"""Uploading a local folder to SeaweedFS: file by file, or packed into shards.

``ingest(client, "photos/", "/datasets/photos")`` mirrors the tree under the destination,
many files at once. It is resumable: each destination directory is listed once (not one stat
per file) and a file already there with the same size is skipped, so running it again after
an interruption uploads only what is missing. Uploads are atomic (a file appears whole or not
at all). Files larger than :data:`LARGE_FILE` stream from disk in chunks
(:func:`~seaweed_data.core.upload.write_file`) instead of being read into memory.

With ``shards="tfrecord"`` or ``shards="pt"`` the files (sorted by relative path) are packed
into shards of at most ``shard_bytes`` of file data each (a larger file gets a shard of its
own), named ``shard-00000-of-00012.tfrecord`` (or ``.pt``), next to a manifest ``shards.json``:

- TFRecord: one record per file, its raw bytes, framed by
  :func:`~seaweed_data.core.records.write_records`; the manifest says which file each record
  is (record ``k`` of a shard is the ``k``-th file the manifest lists for it);
- ``.pt``: ``torch.save`` of a list of ``{"path": relative path, "data": file bytes}`` dicts
  (loads with ``weights_only=True``); :class:`~seaweed_data.torch.ShardDataset` yields one such
  dict per file.

``shards.json`` is ``{"format": ..., "shard_bytes": ..., "shards": [{"name": ..., "files":
[[relative path, size], ...]}, ...]}``. It is written first; a later run with the same plan
skips the shards already there, a run with a different plan rewrites them all.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from .core.client import Client
from .core.records import write_records
from .core.upload import write_file
from .errors import NotFoundError

LARGE_FILE = 8 << 20
"""Files above this size are streamed from disk instead of read whole."""
MANIFEST = "shards.json"
ShardKind = Literal["tfrecord", "pt"]
Progress = Callable[[int], Any]


@dataclass(frozen=True)
class LocalFile:
    """A file under the source folder: its path relative to it (with ``/``) and size."""

    relpath: str
    size: int


@dataclass
class IngestResult:
    """What one run of :func:`ingest` did."""

    files: int = 0
    uploaded: int = 0
    skipped: int = 0
    bytes_uploaded: int = 0
    listings: int = 0
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0


def scan(source: Path) -> list[LocalFile]:
    """Every regular file under ``source``, sorted by relative path (symlinks to files too)."""
    found = []
    for top, dirs, names in os.walk(source):
        dirs.sort()
        for name in names:
            path = Path(top, name)
            if path.is_file():
                found.append(LocalFile(path.relative_to(source).as_posix(), path.stat().st_size))
    return sorted(found, key=lambda f: f.relpath)


def ingest(client: Client, source: str | os.PathLike[str], dest: str, *,
           shards: ShardKind | None = None, shard_bytes: int = 64 << 20, workers: int = 16,
           progress: bool = True) -> IngestResult:
    """Upload the folder ``source`` to ``dest`` (a location on ``client``'s filer)."""
    root = Path(source)
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {str(root)!r}")
    if workers < 1 or shard_bytes < 1:
        raise ValueError("workers and shard_bytes must be >= 1")
    started = time.perf_counter()
    files = scan(root)
    target = client.path(dest).rstrip("/") or "/"
    with tqdm(total=sum(f.size for f in files), unit="B", unit_scale=True, unit_divisor=1024,
              desc="ingest", disable=not progress) as bar:
        if shards is None:
            result = _upload_files(client, root, target, files, workers, bar.update)
        else:
            result = _upload_shards(client, root, target, files, shards, shard_bytes,
                                    min(workers, 4), bar.update)
    result.seconds = time.perf_counter() - started
    return result


def remote_sizes(client: Client, directory: str) -> dict[str, int]:
    """Name -> size of the files in ``directory`` (one listing; empty if it does not exist)."""
    try:
        return {e.name: e.size for e in client.scandir(directory) if not e.is_dir}
    except NotFoundError:
        return {}


def _join(directory: str, relpath: str) -> str:
    return f"{directory.rstrip('/')}/{relpath}"


def _upload_files(client: Client, root: Path, target: str, files: list[LocalFile],
                  workers: int, advance: Progress) -> IngestResult:
    directories = sorted({_join(target, f.relpath).rsplit("/", 1)[0] or "/" for f in files})
    with ThreadPoolExecutor(workers) as pool:
        listed = dict(zip(directories, pool.map(lambda d: remote_sizes(client, d), directories),
                          strict=True))
        result = IngestResult(files=len(files), listings=len(directories))
        todo = []
        for f in files:
            remote = _join(target, f.relpath)
            parent, name = remote.rsplit("/", 1)
            if listed[parent or "/"].get(name) == f.size:
                result.skipped += 1
                advance(f.size)
            else:
                todo.append(f)

        def put(f: LocalFile) -> int:
            _put_file(client, root / f.relpath, _join(target, f.relpath), f.size)
            return f.size

        for size in pool.map(put, todo):  # progress from this thread only
            advance(size)
            result.uploaded += 1
    result.bytes_uploaded = sum(f.size for f in todo)
    return result


def _put_file(client: Client, local: Path, remote: str, size: int) -> None:
    if size > LARGE_FILE:
        with open(local, "rb") as stream:
            write_file(client, remote, stream)
    else:
        client.write(remote, local.read_bytes())


# -- shards ------------------------------------------------------------------------------------

def plan_shards(files: list[LocalFile], shard_bytes: int) -> list[list[LocalFile]]:
    """Consecutive groups of files with at most ``shard_bytes`` of data (or one larger file)."""
    groups: list[list[LocalFile]] = []
    size = 0
    for f in files:
        if not groups or (groups[-1] and size + f.size > shard_bytes):
            groups.append([])
            size = 0
        groups[-1].append(f)
        size += f.size
    return groups


def manifest(kind: ShardKind, shard_bytes: int, groups: list[list[LocalFile]]) -> dict[str, Any]:
    """The ``shards.json`` document of a plan."""
    count = len(groups)
    return {"format": kind, "shard_bytes": shard_bytes, "shards": [
        {"name": f"shard-{i:05d}-of-{count:05d}.{kind}",
         "files": [[f.relpath, f.size] for f in group]} for i, group in enumerate(groups)]}


def _upload_shards(client: Client, root: Path, target: str, files: list[LocalFile],
                   kind: ShardKind, shard_bytes: int, workers: int,
                   advance: Progress) -> IngestResult:
    groups = plan_shards(files, shard_bytes)
    plan = manifest(kind, shard_bytes, groups)
    existing = remote_sizes(client, target)
    same_plan = MANIFEST in existing and _remote_manifest(client, target) == plan
    if not same_plan:
        client.write(_join(target, MANIFEST), json.dumps(plan, indent=1).encode())
    result = IngestResult(files=len(files), listings=1)
    pack = _pack_pt if kind == "pt" else _pack_tfrecord

    def build(item: tuple[dict[str, Any], list[LocalFile]]) -> int:
        entry, group = item
        data = pack(root, group)
        write_file(client, _join(target, entry["name"]), data)
        return len(data)

    todo = []
    for entry, group in zip(plan["shards"], groups, strict=True):
        result.shards.append(_join(target, entry["name"]))
        if same_plan and entry["name"] in existing:
            result.skipped += len(group)
            advance(sum(f.size for f in group))
        else:
            todo.append((entry, group))
    with ThreadPoolExecutor(workers) as pool:
        for (_, group), size in zip(todo, pool.map(build, todo), strict=True):
            advance(sum(f.size for f in group))
            result.uploaded += len(group)
            result.bytes_uploaded += size
    return result


def _remote_manifest(client: Client, target: str) -> Any:
    try:
        return json.loads(client.read(_join(target, MANIFEST)))
    except (ValueError, NotFoundError):
        return None


def _pack_tfrecord(root: Path, group: Iterable[LocalFile]) -> bytes:
    out = io.BytesIO()
    write_records(out, ((root / f.relpath).read_bytes() for f in group))
    return out.getvalue()


def _pack_pt(root: Path, group: Iterable[LocalFile]) -> bytes:
    import torch  # only the .pt format needs PyTorch

    out = io.BytesIO()
    torch.save([{"path": f.relpath, "data": (root / f.relpath).read_bytes()} for f in group], out)
    return out.getvalue()
