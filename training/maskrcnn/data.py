"""Training crops that keep instance ids, and ground-truth boxes from a label image.

The geometry follows training.augment.random_crop (rescale, crop, rotate, flip) and reuses its
intensity augmentation, but returns the cropped label image itself: Mask R-CNN needs each
nucleus's box and mask, not the [foreground, boundary] maps.
"""

from __future__ import annotations

import cv2
import numpy as np

from training.augment import AugmentConfig, _intensity


def instance_crop(
    image: np.ndarray, labels: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented float32 (crop, crop, 1) image and its int32 (crop, crop) labels."""
    scale = float(np.exp(rng.uniform(*np.log(config.scale_range))))
    source = max(8, int(round(config.crop / scale)))
    pad_y, pad_x = max(0, source - image.shape[0]), max(0, source - image.shape[1])
    if pad_y or pad_x:
        pads = ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2))
        image = np.pad(image, pads, mode="reflect")
        labels = np.pad(labels, pads, mode="constant")
    y = int(rng.integers(0, image.shape[0] - source + 1))
    x = int(rng.integers(0, image.shape[1] - source + 1))
    image = image[y : y + source, x : x + source]
    labels = labels[y : y + source, x : x + source]
    if source != config.crop:
        size = (config.crop, config.crop)
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    rotations = int(rng.integers(0, 4))
    image, labels = np.rot90(image, rotations), np.rot90(labels, rotations)
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    image = _intensity(np.ascontiguousarray(image), config, rng)
    return image[..., None], labels.astype(np.int32)


def instance_boxes(labels: np.ndarray, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids and tight (y1, x1, y2, x2) boxes of the instances with at least ``min_area`` px."""
    ids, areas = np.unique(labels, return_counts=True)
    ids = ids[(ids != 0) & (areas >= min_area)]
    boxes = np.zeros((len(ids), 4), np.float32)
    for row, instance in enumerate(ids):
        ys, xs = np.nonzero(labels == instance)
        boxes[row] = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    return ids, boxes
