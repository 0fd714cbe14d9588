"""Whole-image prediction with a Keras model, for validation during training."""

from __future__ import annotations

import numpy as np

from edgeseg.postprocess import instances_from_probabilities
from edgeseg.preprocess import normalize


def predict_probabilities(model, image: np.ndarray, multiple: int) -> np.ndarray:
    """Raw image -> (H, W, 2) probabilities; pads (reflect) to a multiple, never resizes."""
    normalized = normalize(image)
    height, width = normalized.shape
    pad_y, pad_x = (-height) % multiple, (-width) % multiple
    padded = np.pad(normalized, ((0, pad_y), (0, pad_x)), mode="reflect")
    probabilities = np.asarray(model(padded[None, ..., None], training=False))[0]
    return probabilities[:height, :width]


def predict_labels(model, image: np.ndarray, multiple: int) -> np.ndarray:
    probabilities = predict_probabilities(model, image, multiple)
    return instances_from_probabilities(probabilities[..., 0], probabilities[..., 1])
