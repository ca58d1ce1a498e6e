"""Shard files for tests: TFRecord bytes with their record offsets, ``torch.save`` bytes."""

from __future__ import annotations

import io
from typing import Any

import torch

from seaweed_data.core.records import encode_record


def framed(records: list[bytes]) -> tuple[bytes, list[int]]:
    """A TFRecord file and the byte offset of each record in it."""
    offsets, parts, at = [], [], 0
    for record in records:
        offsets.append(at)
        parts.append(encode_record(record))
        at += len(parts[-1])
    return b"".join(parts), offsets


def pt_bytes(obj: Any) -> bytes:
    """What ``torch.save(obj)`` writes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
