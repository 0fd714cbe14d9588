"""A quick-look PNG: nucleus outlines drawn on the normalised image.

Lets a technician check a batch by eye without opening Fiji. Touching nuclei get different
colours so a wrong split or merge is visible.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from edgeseg.imageio import atomic_path


def _palette(count: int) -> np.ndarray:
    """``count`` + 1 bright, distinct RGB colours (golden-ratio hues); index 0 unused."""
    hues = (np.arange(count + 1) * 0.618034 % 1.0 * 180).astype(np.uint8)
    hsv = np.stack([hues, np.full_like(hues, 220), np.full_like(hues, 255)], axis=-1)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def draw_overlay(normalized: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3): the [0, 1] image in gray with each nucleus' inner outline in colour."""
    gray = (np.clip(normalized, 0.0, 1.0) * 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    kernel = np.ones((3, 3), np.uint8)
    outline = (labels > 0) & (cv2.dilate(labels, kernel) != cv2.erode(labels, kernel))
    rgb[outline] = _palette(int(labels.max(initial=0)))[labels[outline]]
    return rgb


def write_overlay(path: str | os.PathLike, normalized: np.ndarray, labels: np.ndarray) -> None:
    """Write the overlay as a PNG, atomically."""
    rgb = draw_overlay(normalized, labels)
    with atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: could not write the overlay PNG")
