"""Test-time augmentation: average the network's view of an image and of its mirror images.

A network trained with flips should give the same answer for a mirrored image, but its errors
differ from view to view; averaging the four flipped predictions (as Cellpose's ``augment``
does) smooths them out, at four times the network cost. Adding the transposed views (all
eight symmetries) scored no better on validation for twice the work (training/README.md).
"""

from __future__ import annotations

import numpy as np

from edgeseg.backends.base import Backend
from edgeseg.tiling import TileSettings, predict_tiled

#: Axes to mirror for each view; each flip is its own inverse.
FLIPS: tuple[tuple[int, ...], ...] = ((), (1,), (0,), (0, 1))


def predict_flip_averaged(
    backend: Backend, image: np.ndarray, settings: TileSettings
) -> np.ndarray:
    """float32 (H, W, C) probabilities for a normalised (H, W) image, averaged over flips."""
    total = np.zeros((*image.shape, backend.channels), dtype=np.float32)
    for axes in FLIPS:  # np.flip over no axes is the image itself, not a copy
        probabilities = predict_tiled(backend, np.ascontiguousarray(np.flip(image, axes)), settings)
        total += np.flip(probabilities, axes)
    return total / len(FLIPS)
