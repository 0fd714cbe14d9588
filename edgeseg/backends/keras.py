"""Keras backend: runs the training-format .keras model, for checks on a training machine.

TensorFlow is not part of the runtime install; this backend exists only where the train
extra is installed and says so clearly elsewhere.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.backends.base import Backend, BackendUnavailable


def load_keras_file(path: Path) -> Any:
    """The model in a .keras file; a damaged file is named as such (Keras itself reports a
    truncated archive as "File not found")."""
    import keras

    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not a complete .keras file (a Keras model is a zip archive; this one "
            "is cut short or is not a Keras model)"
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a model it cannot rebuild
        raise ValueError(f"{path}: Keras cannot load this model ({error})") from error


class KerasBackend(Backend):
    name = "keras"

    def __init__(self, path: Path, manifest: Mapping[str, Any], threads: int | None = None):
        try:
            import keras  # noqa: F401  (the Keras 3 API this backend loads with)
            import tensorflow as tf
        except ImportError as error:
            raise BackendUnavailable(
                "Keras backend unavailable here: TensorFlow/Keras is not installed "
                "(install edgeseg[train], or use an exported .onnx/.tflite model)"
            ) from error
        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
            except RuntimeError:  # TensorFlow already started in this process
                warnings.warn(
                    "TensorFlow is already initialised: threads setting ignored", stacklevel=2
                )
        # Keras loads from a path only; load_backend verified this file's sha256 just before.
        self._adopt(load_keras_file(path))

    @classmethod
    def from_model(cls, model: Any) -> KerasBackend:
        """Wrap a live in-memory model, so training validates through the runtime pipeline."""
        backend = cls.__new__(cls)
        backend._adopt(model)
        return backend

    def _adopt(self, model: Any) -> None:
        self._model = model
        batch, height, width = model.input_shape[:3]
        self.fixed_batch = batch
        self.input_size = (height, width) if height and width else None
        self.channels = self.model_channels = model.output_shape[-1]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        # An eager call, not predict_on_batch: its tf.function retraces with unknown H and W
        # once tile shapes vary (images narrower than a tile), and bilinear UpSampling2D
        # cannot run on unknown sizes.
        return np.asarray(self._model(batch, training=False))
