"""Cellpose-style ``diameter``: segment nuclei much bigger or smaller than a model knows.

A network only finds nuclei of about the size it was trained on: its manifest's
``nucleus_diameter.median_px``, measured on its training labels (training/nucleus_size.py).
Given the typical nucleus diameter in the user's images, the image is resized so its nuclei
have that size, segmented, and the labels are resized back to the image's own shape. Both
segmenters (U-Net family and Mask R-CNN) share this one implementation.

``diameter="auto"`` measures it instead, as Cellpose's size estimate does from a first pass:
the image is segmented as it is, and only if its nuclei come out far bigger than the model's
(``AUTO_RATIO`` times) is it segmented again, shrunk to the model's scale. At such sizes a
model splits each nucleus into textured pieces or misses it; nearer its own size, shrinking
costs more boundary detail than it gains. Smaller nuclei are never enlarged automatically
(a noisy first pass would multiply the work): give their diameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import cv2
import numpy as np

from edgeseg.imageio import DEFAULT_MAX_MEGAPIXELS
from edgeseg.postprocess import relabel_sequential

#: Scales this close to 1 change nothing worth a resize: the image is segmented as it is.
TOLERANCE = 0.05
#: A rescaled image smaller than this on a side has nothing left to segment.
MIN_SIDE = 16
#: Enlarging past this is refused unless told otherwise (inference needs about 60 bytes per
#: pixel); `edgeseg segment --max-megapixels` sets it for reading and rescaling alike.
MAX_MEGAPIXELS = DEFAULT_MAX_MEGAPIXELS
#: ``diameter="auto"`` re-segments when the first pass's median nucleus is this many times
#: the model's; chosen on the validation split and on it magnified 3x (training/README.md).
AUTO_RATIO = 3.0
AUTO = "auto"
#: A nucleus diameter in pixels, AUTO to measure it, or None to segment at the image's scale.
Diameter = float | Literal["auto"] | None
#: Pixel types cv2.resize takes; others are resized as float32 (normalisation makes them so).
_RESIZABLE = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def recorded_diameter(manifest: Mapping[str, Any]) -> float | None:
    """The model's typical training nucleus diameter in pixels, or None if not recorded."""
    record = manifest.get("nucleus_diameter")
    value = record.get("median_px") if isinstance(record, Mapping) else None
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def diameter_scale(manifest: Mapping[str, Any], diameter: float) -> float:
    """The factor that gives nuclei of ``diameter`` px the size the model was trained on.

    Refuses a non-positive diameter, and a model whose manifest records no diameter (made
    before edgeseg measured it): guessing the training size would silently misscale.
    """
    scale = required_diameter(manifest) / diameter if diameter > 0 else math.inf
    if not (math.isfinite(diameter) and math.isfinite(scale) and diameter > 0):
        raise ValueError(
            f"the nucleus diameter must be a positive number of pixels, got {diameter}"
        )
    return scale


def required_diameter(manifest: Mapping[str, Any]) -> float:
    """``recorded_diameter``, or a ValueError saying why rescaling is impossible without it."""
    model = recorded_diameter(manifest)
    name = manifest.get("name") or manifest.get("artifact") or "this model"
    if model is None and "nucleus_diameter" in manifest:
        raise ValueError(
            f"model {name!r} records an invalid nucleus_diameter in its manifest "
            f"({manifest['nucleus_diameter']!r}: its median_px must be a positive number of "
            "pixels), so images cannot be rescaled to its nucleus size; re-export the model"
        )
    if model is None:
        raise ValueError(
            f"model {name!r} records no nucleus_diameter in its manifest (it predates that "
            "field), so images cannot be rescaled to its nucleus size; leave the diameter "
            "unset, or use a model whose manifest was regenerated or re-exported with it"
        )
    return model


def parse_diameter(text: str) -> float | Literal["auto"]:
    """A diameter as typed: "auto" (any case) or a finite number of pixels > 0."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{text!r} is neither a positive number of pixels nor 'auto'")
    return value


def diameter_text(diameter: Diameter) -> str:
    """How a diameter reads in messages, summaries and fingerprints: "80", "12.5", "auto"."""
    if diameter is None or diameter == AUTO:
        return diameter or ""
    return f"{diameter:g}"


def median_diameter(labels: np.ndarray) -> float | None:
    """Median equivalent diameter 2*sqrt(area/pi) of the instances in ``labels``, or None."""
    areas = np.bincount(labels.ravel())[1:]
    return diameter_of_areas(areas[areas > 0])


def diameter_of_areas(areas: Sequence[float] | np.ndarray) -> float | None:
    """Median equivalent diameter of instances of these pixel areas, or None for none."""
    return float(2 * np.sqrt(np.median(areas) / np.pi)) if len(areas) else None


def rescales(scale: float) -> bool:
    """Whether a scale is far enough from 1 to be worth a resize."""
    return abs(scale - 1) > TOLERANCE


def segment_at_diameter(
    segment: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    diameter: float | Literal["auto"],
    manifest: Mapping[str, Any],
    min_area: int,
    max_megapixels: float = MAX_MEGAPIXELS,
) -> np.ndarray:
    """Labels of ``image`` (raw, (H, W) or (H, W, C)) whose nuclei are ``diameter`` px across.

    ``segment`` segments at the model's own scale; its labels are brought back with
    nearest-neighbour resizing to exactly (H, W), then renumbered 1..N with instances under
    ``min_area`` pixels (slivers of the resize) dropped. The rescaled image may not exceed
    ``max_megapixels`` (nor the image's own size, if larger). AUTO: see the module docstring.
    """
    if diameter == AUTO:
        model = required_diameter(manifest)
        labels = segment(image)
        found = median_diameter(labels)
        if found is None or found <= AUTO_RATIO * model:
            return labels
        if _size_problem(_scaled_size(image, model / found), image, max_megapixels):
            return labels  # e.g. a strip too thin to shrink: keep the first pass, never fail
        diameter = found
    scale = diameter_scale(manifest, diameter)
    if not rescales(scale):
        return segment(image)
    height, width = image.shape[:2]
    size = _scaled_size(image, scale)
    if (problem := _size_problem(size, image, max_megapixels)) is not None:
        raise ValueError(
            f"nuclei {diameter:g} px across need this {width}x{height} image rescaled "
            f"x{scale:.3g} to {size[0]:.6g}x{size[1]:.6g}, {problem}: check the diameter "
            "(pixels of this image)"
        )
    source = image if image.dtype in _RESIZABLE else image.astype(np.float32)
    resized = cv2.resize(
        source, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    )
    if image.ndim == 3 and resized.ndim == 2:  # cv2 drops a single channel axis
        resized = resized[..., None]
    labels = segment(resized)
    # NEAREST_EXACT samples pixel centres like AREA/LINEAR; plain NEAREST shifts labels by
    # up to half a source pixel towards the bottom right.
    restored = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    return relabel_sequential(restored, min_area)


def _scaled_size(image: np.ndarray, scale: float) -> tuple[int, int]:
    """``image``'s (width, height), cv2's order, once rescaled by ``scale``."""
    height, width = image.shape[:2]
    return max(1, round(width * scale)), max(1, round(height * scale))


def _size_problem(size: tuple[int, int], image: np.ndarray, max_megapixels: float) -> str | None:
    """Why ``image`` cannot be segmented at ``size``: too small to hold a nucleus, or too
    large to fit in memory; None when it can."""
    if min(size) < MIN_SIDE:
        return f"smaller than {MIN_SIDE} pixels a side"
    if math.prod(size) > max(max_megapixels * 1e6, math.prod(image.shape[:2])):
        return f"more than {max_megapixels:g} megapixels (--max-megapixels)"
    return None
