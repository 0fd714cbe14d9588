"""A quick-look PNG: nucleus outlines drawn on the image as it was captured.

Lets a technician check a batch by eye without opening Fiji. Touching nuclei get different
colours so a wrong split or merge is visible. The image keeps its own colours and polarity
(a stained slide still looks like a slide, whatever channel the model was fed), only
contrast-stretched so a dim 16-bit fluorescence image is visible.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from edgeseg.imageio import write_png
from edgeseg.preprocess import HIGH_PERCENTILE, LOW_PERCENTILE, stretched, to_gray


def _palette(count: int) -> np.ndarray:
    """``count`` + 1 bright, distinct RGB colours (golden-ratio hues); index 0 unused."""
    hues = (np.arange(count + 1) * 0.618034 % 1.0 * 180).astype(np.uint8)
    hsv = np.stack([hues, np.full_like(hues, 220), np.full_like(hues, 255)], axis=-1)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def displayed(image: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) of a raw image: its colours (alpha dropped) or its gray, stretched
    between its low and high percentiles over all channels, so hues keep their balance."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] >= 3:
        colour = array[..., :3].astype(np.float32)
    else:
        colour = np.repeat(to_gray(array)[..., None], 3, axis=2)
    low, high = np.percentile(colour, [LOW_PERCENTILE, HIGH_PERCENTILE])
    return (stretched(colour, low, high) * 255).astype(np.uint8)


def draw_overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3): ``displayed(image)`` with each nucleus' inner outline in colour."""
    rgb = displayed(image)
    kernel = np.ones((3, 3), np.uint8)
    outline = (labels > 0) & (cv2.dilate(labels, kernel) != cv2.erode(labels, kernel))
    rgb[outline] = _palette(int(labels.max(initial=0)))[labels[outline]]
    return rgb


def write_overlay(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB overlay (``draw_overlay``) as a PNG, atomically."""
    write_png(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
