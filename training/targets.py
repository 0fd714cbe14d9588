"""Training targets that match edgeseg.postprocess: foreground, a 2-pixel inner boundary and,
for models that predict it, each nucleus's normalised distance to its edge.

The boundary band separates touching nuclei: post-processing seeds each nucleus from its
foreground minus boundary, so the targets here define what "boundary" means for every model.
The distance map (1 at a nucleus's centre, falling towards its edge, as StarDist's) gives
seeds that stay apart where touching nuclei meet, whatever their size.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from edgeseg.manifest import OUTPUT_CHANNELS

BOUNDARY_WIDTH = 2


def _edges(labels: np.ndarray) -> np.ndarray:
    """Pixels of a nucleus touching background or another nucleus (8-connected)."""
    kernel = np.ones((3, 3), np.uint8)
    labels32 = labels.astype(np.float32)  # exact for ids < 2**24
    return (cv2.dilate(labels32, kernel) != cv2.erode(labels32, kernel)) & (labels > 0)


def inner_boundary(labels: np.ndarray, width: int = BOUNDARY_WIDTH) -> np.ndarray:
    """Pixels of each nucleus within ``width`` px of its edge (background or another nucleus)."""
    edge = _edges(labels)
    if width > 1:
        kernel = np.ones((3, 3), np.uint8)
        edge = cv2.dilate(edge.astype(np.uint8), kernel, iterations=width - 1) > 0
    return edge & (labels > 0)


def edge_distance(labels: np.ndarray) -> np.ndarray:
    """float32 distance of each nucleus pixel to its nucleus's edge, divided by that
    nucleus's largest (1 at its centre, 1/largest on its edge, 0 on background).

    Normalising per nucleus makes the map size-free: small and large nuclei peak alike.
    """
    foreground = labels > 0
    interior = (foreground & ~_edges(labels)).astype(np.uint8)
    distance = cv2.distanceTransform(interior, cv2.DIST_L2, 3) + 1.0
    distance[~foreground] = 0.0
    ids = labels.ravel().astype(np.int64)
    largest = np.zeros(int(ids.max(initial=0)) + 1, np.float32)
    np.maximum.at(largest, ids, distance.ravel())
    largest[0] = 1.0
    return (distance / largest[labels]).astype(np.float32)


TARGETS = {
    "foreground": lambda labels: (labels > 0).astype(np.float32),
    "boundary": lambda labels: inner_boundary(labels).astype(np.float32),
    "distance": edge_distance,
}


def make_targets(
    labels: np.ndarray,
    channels: Sequence[str] = OUTPUT_CHANNELS,
    distance: np.ndarray | None = None,
) -> np.ndarray:
    """(H, W) labels -> (H, W, len(channels)) float32 targets, in ``channels``' order;
    ``distance``, when given, is the distance map (measured before cropping, see
    training.augment.random_crop) instead of one measured on ``labels``."""
    return np.stack(
        [
            distance if channel == "distance" and distance is not None else TARGETS[channel](labels)
            for channel in channels
        ],
        axis=-1,
    )
