"""Training crops that keep instance ids, and ground-truth boxes from a label image.

The crops are training.augment's (rescale, crop, rotate, flip, intensity), keeping the cropped
label image itself: Mask R-CNN needs each nucleus's box and mask, not the
[foreground, boundary] maps.
"""

from __future__ import annotations

import numpy as np

from training.augment import AugmentConfig, augmented_crop


def instance_crop(
    image: np.ndarray, labels: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented float32 (crop, crop, 1) image and its int32 (crop, crop) labels."""
    image, labels = augmented_crop(image, labels, config, rng)
    return image, labels.astype(np.int32)


def instance_boxes(labels: np.ndarray, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids and tight (y1, x1, y2, x2) boxes of the instances with at least ``min_area`` px."""
    ids, areas = np.unique(labels, return_counts=True)
    ids = ids[(ids != 0) & (areas >= min_area)]
    boxes = np.zeros((len(ids), 4), np.float32)
    for row, instance in enumerate(ids):
        ys, xs = np.nonzero(labels == instance)
        boxes[row] = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    return ids, boxes
