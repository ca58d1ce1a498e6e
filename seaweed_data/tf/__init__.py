"""TensorFlow layer of seaweed_data (tf.data sources).

Importing it requires TensorFlow: ``pip install "seaweed-data[tf]"``.
"""

from __future__ import annotations

try:
    import tensorflow  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without tensorflow installed
    raise ImportError(
        "seaweed_data.tf needs TensorFlow: pip install 'seaweed-data[tf]' "
        "(or tensorflow-cpu)") from exc

__all__: list[str] = []
