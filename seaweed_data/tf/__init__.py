"""TensorFlow layer of seaweed_data (tf.data sources).

Importing it requires TensorFlow: ``pip install "seaweed-data[tf]"``.

- :func:`TFRecordDataset`: ``tf.data.TFRecordDataset`` over TFRecord files on SeaweedFS (same
  records, order and ``element_spec``), with exact-order prefetching of the coming files.
- :func:`FileDataset`: ``(path, bytes)`` of whole files, e.g. JPEGs for ``tf.io.decode_jpeg``.
"""

from __future__ import annotations

try:
    import tensorflow  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without tensorflow installed
    raise ImportError(
        "seaweed_data.tf needs TensorFlow: pip install 'seaweed-data[tf]' "
        "(or tensorflow-cpu)") from exc

from .files import FileDataset
from .records import TFRecordDataset

__all__ = ["FileDataset", "TFRecordDataset"]
