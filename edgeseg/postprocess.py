"""From network probabilities to a uint16 instance label image.

Every edgeseg semantic model predicts nucleus foreground and nucleus boundary maps; some also
predict each nucleus's normalised distance to its edge (1 at its centre, StarDist-like).
Foreground pixels away from any boundary (and, with a distance map, near a centre) are seeds,
one per nucleus even when nuclei touch; each foreground component is then split between its
seeds by nearest seed. This runs in OpenCV only, so the runtime needs no scikit-image, and is
the one post-processing used by `edgeseg segment`, training validation, export checks and
benchmarks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from math import isfinite
from numbers import Real

import cv2
import numpy as np

#: The values each kind of setting may take, as dataclass field metadata.
_PROBABILITY = {"valid": lambda value: 0 <= value <= 1, "allowed": "lie in [0, 1]"}
_PIXELS = {"valid": lambda value: value >= 0, "allowed": "be 0 or more"}
#: A normalised distance threshold of 1 or more would keep no seed.
_BELOW_ONE = {"valid": lambda value: 0 <= value < 1, "allowed": "lie in [0, 1)"}


def _finite_number(value: object) -> bool:
    """A number a threshold can be: not a bool, not NaN or infinite, not too large for a
    float (JSON integers have no limit)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return False
    try:
        return isfinite(value)
    except OverflowError:
        return False


@dataclass(frozen=True)
class PostprocessSettings:
    foreground_threshold: float = field(default=0.5, metadata=_PROBABILITY)
    boundary_threshold: float = field(default=0.5, metadata=_PROBABILITY)
    min_area: int = field(default=8, metadata=_PIXELS)
    #: Seeds smaller than this are noise in the boundary map, not nuclei: dropping them stops
    #: one nucleus from being cut into fragments.
    min_seed_area: int = field(default=0, metadata=_PIXELS)
    #: With a distance map, seeds are also kept to pixels whose normalised distance to the
    #: nucleus edge exceeds this: touching nuclei meet at distance ~0, their centres are ~1.
    distance_threshold: float = field(default=0.0, metadata=_BELOW_ONE)

    def __post_init__(self) -> None:
        """Refuse settings that segment nonsense without an error: a foreground threshold of
        -1 made the whole image one nucleus, reported as a success."""
        for setting in fields(self):
            value = getattr(self, setting.name)
            if not _finite_number(value):
                raise ValueError(f"{setting.name} must be a number, got {value!r}")
            if not setting.metadata["valid"](value):
                allowed = setting.metadata["allowed"]
                raise ValueError(f"{setting.name} must {allowed}, got {value!r}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _split_by_nearest_seed(seeds: np.ndarray) -> np.ndarray:
    """Label every pixel of a crop with the id of its nearest seed pixel (seeds: int32 ids)."""
    _, nearest = cv2.distanceTransformWithLabels(
        (seeds == 0).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    # DIST_LABEL_PIXEL numbers the zero pixels of the input (our seed pixels) in raster order.
    seed_ids = seeds[seeds > 0]
    return seed_ids[nearest - 1]


def labels_from_maps(
    maps: np.ndarray, settings: PostprocessSettings = PostprocessSettings()
) -> np.ndarray:
    """uint16 labels from a model's (H, W, C) output: [foreground, boundary(, distance)]."""
    if maps.ndim != 3 or maps.shape[-1] not in (2, 3):
        raise ValueError(f"expected (H, W, 2) or (H, W, 3) probability maps, got {maps.shape}")
    distance = maps[..., 2] if maps.shape[-1] == 3 else None
    return instances_from_probabilities(maps[..., 0], maps[..., 1], settings, distance)


def instances_from_probabilities(
    foreground: np.ndarray,
    boundary: np.ndarray,
    settings: PostprocessSettings = PostprocessSettings(),
    distance: np.ndarray | None = None,
) -> np.ndarray:
    """Return uint16 labels (0 = background, 1..N nuclei) from (H, W) probability maps."""
    if distance is None and settings.distance_threshold > 0:
        raise ValueError(
            f"distance_threshold {settings.distance_threshold} needs a model with a distance "
            "output; this one predicts foreground and boundary only"
        )
    mask = (foreground > settings.foreground_threshold).astype(np.uint8)
    seeds_mask = mask & (boundary < settings.boundary_threshold).astype(np.uint8)
    if distance is not None and settings.distance_threshold > 0:
        seeds_mask &= (distance > settings.distance_threshold).astype(np.uint8)
    seed_count, seeds, seed_stats, _ = cv2.connectedComponentsWithStats(
        seeds_mask, connectivity=8, ltype=cv2.CV_32S
    )
    if settings.min_seed_area > 1 and seed_count > 1:
        small = seed_stats[:, cv2.CC_STAT_AREA] < settings.min_seed_area
        small[0] = False
        seeds[small[seeds]] = 0
    count, components, stats, _ = cv2.connectedComponentsWithStats(
        mask, connectivity=8, ltype=cv2.CV_32S
    )
    labels = np.zeros(mask.shape, dtype=np.int32)
    next_id = int(seeds.max()) + 1
    for component in range(1, count):
        x, y, w, h = stats[component, :4]
        window = (slice(y, y + h), slice(x, x + w))
        inside = components[window] == component
        crop_seeds = np.where(inside, seeds[window], 0)
        seed_ids = np.unique(crop_seeds[crop_seeds > 0])
        if seed_ids.size == 0:  # a nucleus too small to keep a seed: keep it whole
            labels[window][inside] = next_id
            next_id += 1
        elif seed_ids.size == 1:
            labels[window][inside] = seed_ids[0]
        else:
            labels[window][inside] = _split_by_nearest_seed(crop_seeds)[inside]
    return relabel_sequential(labels, settings.min_area)


def relabel_sequential(labels: np.ndarray, min_area: int = 0) -> np.ndarray:
    """Drop instances smaller than ``min_area`` pixels and renumber the rest 1..N as uint16.

    A lookup table indexed by label (ids are non-negative and small) avoids sorting every pixel.
    """
    flat = labels.ravel()
    if flat.size and flat.min() < 0:
        raise ValueError("label images hold non-negative ids")
    areas = np.bincount(flat, minlength=1)
    keep = areas >= max(min_area, 1)
    keep[0] = False
    if keep.sum() > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 nuclei do not fit a uint16 label image")
    table = np.zeros(areas.size, dtype=np.uint16)
    table[keep] = np.arange(1, int(keep.sum()) + 1)
    return table[labels]
