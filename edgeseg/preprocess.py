"""Turn any microscopy image into the single normalised channel every edgeseg model sees.

DSB2018 mixes fluorescence (bright nuclei on black), brightfield (dark nuclei on bright
background) and H&E-like stains. One grayscale channel, percentile-normalised and inverted
when the background is bright, lets one small network serve all of them; training, export
calibration, benchmarks and the runtime all call this same function so they never drift.

Stained images reach the network either as inverted luma or, for models trained so, as their
hematoxylin density (colour deconvolution, Ruifrok & Johnston 2001): luma turns eosin-pink
cytoplasm nearly as dark as nuclei, the hematoxylin channel keeps only the nuclear stain. A
model's manifest names its choice (``preprocess.stained_channel``), see `preprocessing`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from edgeseg.manifest import ManifestError

ImageKind = Literal["fluorescence", "brightfield", "stained"]
StainedChannel = Literal["luma", "hematoxylin"]
STAINED_CHANNELS: tuple[StainedChannel, ...] = ("luma", "hematoxylin")

#: What `normalize` does, as manifests name it: a change to it must change these.
PREPROCESS_NAME = "percentile-gray"
PREPROCESS_VERSION = 1
LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.8

#: Optical densities of hematoxylin, eosin and DAB in R, G, B (Ruifrok & Johnston 2001, as
#: skimage.color.rgb_from_hed); the first column of its inverse reads hematoxylin back.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HEMATOXYLIN_FROM_OD = np.linalg.inv(RGB_FROM_HED)[:, 0].astype(np.float32)
#: Below this fraction of the white level in every channel a pixel passed no light at all.
BLACK_LEVEL = 0.05


def preprocess_spec(stained_channel: StainedChannel = "luma") -> dict[str, Any]:
    """The manifest's ``preprocess`` section for a model fed ``normalize(..., stained_channel)``.

    Luma models keep the section they always had, so their manifests stay byte-identical.
    """
    spec: dict[str, Any] = {"name": PREPROCESS_NAME, "version": PREPROCESS_VERSION}
    if stained_channel != "luma":
        spec["stained_channel"] = stained_channel
    return spec


def preprocessing(manifest: Mapping[str, Any]) -> StainedChannel:
    """The stained-image channel a model was trained on, from its manifest; a model made for
    another normalisation than `normalize` is refused, since it would run on input it never
    saw and give wrong labels without an error."""
    spec = manifest.get("preprocess", {})
    made_for = (spec.get("name", PREPROCESS_NAME), spec.get("version", PREPROCESS_VERSION))
    if made_for != (PREPROCESS_NAME, PREPROCESS_VERSION):
        raise ManifestError(
            f"the model was made for input preprocessed as {made_for[0]!r} version "
            f"{made_for[1]!r}; this edgeseg prepares images as {PREPROCESS_NAME!r} version "
            f"{PREPROCESS_VERSION}"
        )
    channel = spec.get("stained_channel", "luma")
    return checked_stained_channel(channel, "the model manifest's preprocess.stained_channel")


def checked_stained_channel(value: str, what: str = "stained_channel") -> StainedChannel:
    """``value`` if it names a known stained-image channel; else a ValueError naming ``what``."""
    if value not in STAINED_CHANNELS:
        raise ValueError(f"{what} must be one of {STAINED_CHANNELS}, not {value!r}")
    return value


def to_gray(image: np.ndarray) -> np.ndarray:
    """Collapse an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) to float32 (H, W).

    Colour images use the ITU-R BT.601 luma weights; an alpha channel is dropped (DSB's RGBA
    files carry a constant alpha).
    """
    array = np.asarray(image)
    if array.ndim == 2:
        return array.astype(np.float32, copy=False)
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected a 2-D image or one with 1-4 channels, got shape {array.shape}")
    channels = array.shape[2]
    if channels in (1, 2):  # gray, or gray + alpha
        return array[..., 0].astype(np.float32)
    rgb = array[..., :3].astype(np.float32)
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def image_kind(image: np.ndarray) -> ImageKind:
    """Guess the imaging modality: used to invert brightfield and to stratify splits."""
    array = np.asarray(image)
    if _is_stained(array):
        return "stained"
    return _gray_kind(*_levels(to_gray(array)))


def _levels(gray: np.ndarray) -> np.ndarray:
    """Low, median and high percentiles of ``gray`` (in its dtype) from one partial sort."""
    return np.percentile(gray, [LOW_PERCENTILE, 50.0, HIGH_PERCENTILE])


def _is_stained(array: np.ndarray) -> bool:
    """Coloured on a bright background: a stained slide. Colour on black (a fluorescence
    channel saved as RGB, e.g. DAPI in blue) is not: every DSB2018 stain has its brightest
    channel above 0.67 of its maximum on average, such fluorescence far below 0.5."""
    if array.ndim != 3 or array.shape[2] < 3:
        return False
    red, green, blue = (array[..., channel] for channel in range(3))
    brightest = np.maximum(np.maximum(red, green), blue)  # far faster than axis=2 reductions
    spread = float(np.mean(brightest - np.minimum(np.minimum(red, green), blue), dtype=float))
    scale = float(max(brightest.max(), 1.0))
    return spread / scale > 0.02 and float(np.mean(brightest, dtype=float)) / scale > 0.5


def _gray_kind(low: float, median: float, high: float) -> ImageKind:
    if high <= low:
        return "fluorescence"
    return "brightfield" if median > (low + high) / 2 else "fluorescence"


def hematoxylin_density(rgb: np.ndarray) -> np.ndarray:
    """float32 (H, W) hematoxylin optical density of an (H, W, 3+) image, up to an offset.

    Intensities are taken relative to the image's brightest value (its white level, which
    only shifts the density by a constant that `normalize`'s percentile scaling removes), and
    floored at 1/255 of it: a channel at zero inside a dense nucleus is saturation, not
    infinite stain. Pixels dark in every channel (below 1/20: the densest nuclei, but also
    black borders, scale bars or padding) take the density of the densest lit pixel, so a
    black frame cannot stretch the scale and dim every nucleus.
    """
    colour = rgb[..., :3].astype(np.float32)
    colour -= min(float(colour.min()), 0.0)  # floats scaled below zero
    colour /= max(float(colour.max()), 1e-12)
    unlit = colour.max(axis=2) < BLACK_LEVEL
    density = -np.log(np.maximum(colour, 1.0 / 255.0, out=colour), out=colour)
    hematoxylin = density @ HEMATOXYLIN_FROM_OD
    if unlit.any() and not unlit.all():
        hematoxylin[unlit] = hematoxylin[~unlit].max()
    return hematoxylin


def normalize(image: np.ndarray, stained_channel: StainedChannel = "luma") -> np.ndarray:
    """Return float32 (H, W) in about [0, 1] with nuclei bright on a dark background.

    Percentile scaling (as StarDist and Cellpose do) makes 8-bit, 16-bit and float inputs
    look alike; bright-background images (brightfield, stains) are inverted. With
    ``stained_channel="hematoxylin"``, stained images give their hematoxylin density instead.
    """
    checked_stained_channel(stained_channel)
    array = np.asarray(image)
    stained = _is_stained(array)
    if stained and stained_channel == "hematoxylin":
        density = hematoxylin_density(array)  # dense stain = nucleus: no inversion
        low, high = np.percentile(density, [LOW_PERCENTILE, HIGH_PERCENTILE])
        return stretched(density, low, high).astype(np.float32, copy=False)
    gray = to_gray(array)
    low, median, high = _levels(gray)
    scaled = stretched(gray, low, high)
    if stained or _gray_kind(low, median, high) == "brightfield":
        scaled = 1.0 - scaled
    return scaled.astype(np.float32, copy=False)


def stretched(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` mapped from [low, high] to [0, 1] and clipped."""
    scaled = (values - low) / max(float(high - low), 1e-6)
    return np.clip(scaled, 0.0, 1.0, out=scaled)
