"""Random training crops with geometric and intensity augmentation, in NumPy/OpenCV.

Crops are taken from the normalised image and its label image, rescaled (nuclei size varies
with magnification across labs), flipped/rotated, and only then turned into targets, so the
boundary band always has its nominal width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edgeseg.manifest import OUTPUT_CHANNELS
from training.targets import make_targets


@dataclass(frozen=True)
class AugmentConfig:
    crop: int = 128
    scale_range: tuple[float, float] = (0.75, 1.33)
    gamma_range: tuple[float, float] = (0.7, 1.5)
    contrast_range: tuple[float, float] = (0.7, 1.3)
    noise_std_max: float = 0.03
    blur_probability: float = 0.15
    uneven_illumination: float = 0.0

    @classmethod
    def from_dict(cls, values: dict) -> AugmentConfig:
        """Read the JSON form back (JSON turns the range tuples into lists)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def random_crop(
    image: np.ndarray,
    labels: np.ndarray,
    config: AugmentConfig,
    rng: np.random.Generator,
    channels: Sequence[str] = OUTPUT_CHANNELS,
    distance: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (crop, crop, 1) input and its (crop, crop, len(channels)) targets.

    ``distance`` is ``training.targets.edge_distance(labels)`` of the whole image, needed when
    the targets include it: measured before cropping, a nucleus the crop cuts keeps its true
    profile (its centre may lie outside the crop) instead of peaking on the crop's edge, which
    taught a network to see centres where tiles end (training/README.md, session 11).
    """
    if "distance" not in channels:
        image, labels = augmented_crop(image, labels, config, rng)
        return image, make_targets(labels, channels)
    if distance is None:
        raise ValueError("distance targets need the whole image's edge_distance map")
    planes, labels = _geometry(np.dstack([image, distance]), labels, config, rng)
    image = _intensity(np.ascontiguousarray(planes[..., 0]), config, rng)
    cropped_distance = np.ascontiguousarray(planes[..., 1])
    return image[..., None], make_targets(labels, channels, distance=cropped_distance)


def augmented_crop(
    image: np.ndarray, labels: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented float32 (crop, crop, 1) input and its (crop, crop) instance labels."""
    image, labels = _geometry(image, labels, config, rng)
    image = _intensity(np.ascontiguousarray(image), config, rng)
    return image[..., None], labels


def _geometry(
    planes: np.ndarray, labels: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Crop, rescale, rotate and flip (H, W) or (H, W, C) ``planes`` and their labels alike."""
    scale = float(np.exp(rng.uniform(*np.log(config.scale_range))))
    source = max(8, int(round(config.crop / scale)))
    while pads := _pads_towards(planes.shape[:2], source):
        planes, labels = _mirror_padded(planes, labels, pads)
    y = int(rng.integers(0, planes.shape[0] - source + 1))
    x = int(rng.integers(0, planes.shape[1] - source + 1))
    planes = planes[y : y + source, x : x + source]
    labels = labels[y : y + source, x : x + source]
    if source != config.crop:
        size = (config.crop, config.crop)
        planes = cv2.resize(planes, size, interpolation=cv2.INTER_LINEAR)
        labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    rotations = int(rng.integers(0, 4))
    planes, labels = np.rot90(planes, rotations), np.rot90(labels, rotations)
    if rng.random() < 0.5:
        planes, labels = planes[:, ::-1], labels[:, ::-1]
    return planes, np.ascontiguousarray(labels)


def _pads_towards(shape: tuple[int, ...], size: int) -> tuple[tuple[int, int], ...] | None:
    """Centred pads growing ``shape`` towards ``size`` a side, or None when it is reached.

    One mirror holds less than a side, so much smaller images take several passes: one pass
    would repeat a nucleus under one label in the wide band.
    """
    needed = [min(max(0, size - side), max(side - 1, 1)) for side in shape]
    if not any(needed):
        return None
    return tuple((pad // 2, pad - pad // 2) for pad in needed)


def _mirror_padded(
    image: np.ndarray, labels: np.ndarray, pads: tuple[tuple[int, int], ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Pad by mirroring both image and labels, as tiled inference pads short images.

    A mirrored nucleus is a nucleus: labelling it background would teach the network to ignore
    what it sees. Each of the eight mirrored regions gets its own label range, so a nucleus
    cut by the edge and its mirror image stay two instances with a boundary between them.
    """
    image = np.pad(image, pads + ((0, 0),) * (image.ndim - 2), mode="reflect")  # any planes
    mirrored = np.pad(labels, pads, mode="reflect").astype(np.int32)
    (top, bottom), (left, right) = pads
    row_band = np.repeat([0, 1, 2], [top, labels.shape[0], bottom])
    col_band = np.repeat([0, 1, 2], [left, labels.shape[1], right])
    region = (row_band[:, None] * 3 + col_band[None, :] + 5) % 9  # 0 for the original area
    largest = int(labels.max())
    copies = (region > 0) & (mirrored > 0)
    # numbered on from the largest id, densely: ids stay small (float32-exact) over passes
    _, copy_ids = np.unique(mirrored[copies] + region[copies] * (largest + 1), return_inverse=True)
    mirrored[region > 0] = 0
    mirrored[copies] = largest + 1 + copy_ids
    return image, mirrored


def _intensity(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    image = np.clip(image, 0.0, 1.0)
    if config.uneven_illumination > 0:
        image = image * _illumination_field(image.shape, config.uneven_illumination, rng)
    image = image ** rng.uniform(*config.gamma_range)
    image = (image - 0.5) * rng.uniform(*config.contrast_range) + 0.5 + rng.uniform(-0.1, 0.1)
    if rng.random() < config.blur_probability:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
    image = image + rng.normal(0.0, rng.uniform(0.0, config.noise_std_max), image.shape)
    return image.astype(np.float32)


def _illumination_field(
    shape: tuple[int, ...], strength: float, rng: np.random.Generator
) -> np.ndarray:
    """A smooth random gain in [1 - strength, 1]: dim regions and dim nuclei beside bright ones.

    Percentile normalisation sets the scale from an image's brightest nuclei, so nuclei in a
    dimmer part of a field (uneven staining or illumination) reach the network faint; plain
    global gamma/contrast changes never show it that.
    """
    coarse = rng.uniform(1.0 - strength, 1.0, size=(3, 3)).astype(np.float32)
    field = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip(field, 1.0 - strength, 1.0)
