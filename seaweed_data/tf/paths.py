"""File names as ``tf.data`` readers take them, turned into a dataset of locations.

A source accepts what ``tf.data.TFRecordDataset`` accepts: a name, a list of names, a string
tensor (of any shape: its names in row-major order) or a ``tf.data.Dataset`` of scalar
strings. Names are locations (``seaweedfs://HOST:PORT/a/b``, ``http(s)://HOST:PORT/a/b`` or
a bare ``/a/b`` on the filer of ``SEAWEED_FILER``). Names known in Python (a string, a list,
an eager tensor) are checked at once (no I/O) and may be globs, expanded on the filer when the
dataset is iterated (sorted; every iteration lists again). Names in a dataset or a graph
tensor are read as given, as ``tf.data`` does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from ..core.location import has_glob, parse_location

Expand = Callable[[str], list[str]]
"""A name -> the names it stands for (a glob's matches)."""

STRINGS = tf.TensorSpec([None], tf.string)
"""A batch of strings: what the sources' generators yield."""

as_is: Callable[[Callable[..., Any]], Callable[..., Any]] = (
    tf.autograph.experimental.do_not_convert)
"""Marks a function that builds part of a pipeline: called in a ``tf.function`` or traced by
``tf.data``, it runs as written (plain Python on Python values), never rewritten by AutoGraph."""


def names_dataset(filenames: Any, expand: Expand) -> Any:
    """A ``tf.data.Dataset`` of the scalar string locations ``filenames`` stands for."""
    if isinstance(filenames, tf.data.Dataset):
        return checked_dataset(filenames)
    names = python_names(filenames)
    if names is None:  # a symbolic tensor: its values exist only when the graph runs
        if filenames.dtype != tf.string:
            raise TypeError(f"filenames must be strings, got a tensor of {filenames.dtype}")
        return tf.data.Dataset.from_tensor_slices(tf.reshape(filenames, [-1]))
    for name in names:
        parse_location(name)  # a bad location fails here, not in the middle of an epoch
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(names, tf.string, [len(names)]))
    if any(has_glob(name) for name in names):
        dataset = dataset.flat_map(as_is(functools.partial(_expanded, expand=expand)))
    return dataset


def python_names(filenames: Any) -> list[str] | None:
    """The names of a string, a sequence or an eager tensor; None for a graph tensor."""
    if isinstance(filenames, str | bytes):
        return [_text(filenames)]
    if tf.is_tensor(filenames):
        if not tf.executing_eagerly() or not hasattr(filenames, "numpy"):
            return None
        if filenames.dtype != tf.string:
            raise TypeError(f"filenames must be strings, got a tensor of {filenames.dtype}")
        return [_text(name) for name in np.reshape(filenames.numpy(), [-1])]
    if isinstance(filenames, np.ndarray):
        return [_text(name) for name in filenames.reshape(-1)]
    try:
        return [_text(name) for name in filenames]
    except TypeError:
        raise TypeError("filenames must be a string, a sequence of strings, a string tensor "
                        f"or a tf.data.Dataset of strings, got {filenames!r}") from None


def checked_dataset(dataset: Any) -> Any:
    """``dataset`` if its elements are scalar strings (what ``tf.data`` readers take)."""
    spec = dataset.element_spec
    if not (isinstance(spec, tf.TensorSpec) and spec.dtype == tf.string
            and spec.shape.is_compatible_with([])):
        raise TypeError("a dataset of file names must have scalar tf.string elements, "
                        f"got {spec}")
    return dataset


def _text(name: Any) -> str:
    if isinstance(name, bytes | np.bytes_):
        return bytes(name).decode()
    if isinstance(name, str):
        return name
    if tf.is_tensor(name) and hasattr(name, "numpy"):
        return _text(name.numpy())
    raise TypeError(f"a file name must be a string, got {name!r}")


def _expanded(name: Any, expand: Expand) -> Any:
    return tf.data.Dataset.from_generator(functools.partial(glob_matches, expand), args=(name,),
                                          output_signature=STRINGS).unbatch()


def glob_matches(expand: Expand, pattern: bytes) -> list[np.ndarray]:
    """``expand(pattern)`` as one batch of names (run by TensorFlow when iterating)."""
    return [np.array(expand(pattern.decode()), dtype=object)]
