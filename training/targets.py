"""Training targets that match edgeseg.postprocess: foreground and a 2-pixel inner boundary.

The boundary band separates touching nuclei: post-processing seeds each nucleus from its
foreground minus boundary, so the targets here define what "boundary" means for every model.
"""

from __future__ import annotations

import cv2
import numpy as np

BOUNDARY_WIDTH = 2


def inner_boundary(labels: np.ndarray, width: int = BOUNDARY_WIDTH) -> np.ndarray:
    """Pixels of each nucleus within ``width`` px of its edge (background or another nucleus)."""
    kernel = np.ones((3, 3), np.uint8)
    labels32 = labels.astype(np.float32)  # exact for ids < 2**24
    edge = (cv2.dilate(labels32, kernel) != cv2.erode(labels32, kernel)) & (labels > 0)
    if width > 1:
        edge = cv2.dilate(edge.astype(np.uint8), kernel, iterations=width - 1) > 0
    return edge & (labels > 0)


def make_targets(labels: np.ndarray) -> np.ndarray:
    """(H, W) labels -> (H, W, 2) uint8 targets [foreground, boundary]."""
    return np.stack([labels > 0, inner_boundary(labels)], axis=-1).astype(np.uint8)
