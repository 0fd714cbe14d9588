"""INT8 calibration data: seeded, tile-sized crops of real training images.

Quantization ranges are set from what the network sees at run time, so crops are taken from
images normalised whole by edgeseg.preprocess.normalize and padded like edgeseg.tiling pads
small images. Callers pass the samples (the command line passes the training split only, never
validation or test images); the manifest records the ids and a hash of the exact tensor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeseg.data.dataset import Sample
from edgeseg.preprocess import StainedChannel, normalize

SEED = 20240501


@dataclass(frozen=True)
class Calibration:
    tiles: np.ndarray  # float32 (N, size, size, 1)
    ids: tuple[str, ...]  # the sample each tile was cut from
    seed: int
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.tiles).tobytes()).hexdigest()

    def batches(self) -> Iterator[np.ndarray]:
        """One (1, size, size, 1) batch per tile, as the converters' calibrators want."""
        for tile in self.tiles:
            yield tile[None]

    def chunks(self, size: int) -> list[np.ndarray]:
        """The tiles in batches of at most ``size`` (ONNX Runtime's calibrator runs these)."""
        return chunks(self.tiles, size)

    def record(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "count": len(self.ids),
            "tile": int(self.tiles.shape[1]),
            "seed": self.seed,
            "ids": list(self.ids),
            "sha256": self.sha256,
        }


def calibration_tiles(
    samples: Sequence[Sample],
    count: int,
    size: int,
    seed: int = SEED,
    source: str = "",
    stained_channel: StainedChannel = "luma",
) -> Calibration:
    """``count`` random ``size`` x ``size`` crops, one per image in a seeded shuffled order
    (cycling when there are fewer images than crops), normalised as the model's manifest says."""
    if not samples or count < 1:
        raise ValueError("calibration needs at least one image and one crop")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(samples))
    tiles, ids = [], []
    for index in range(count):
        sample = samples[order[index % len(samples)]]
        image = normalize(sample.image, stained_channel)
        pads = [(0, max(size - length, 0)) for length in image.shape]
        image = np.pad(image, pads, mode="reflect")
        top = int(rng.integers(0, image.shape[0] - size + 1))
        left = int(rng.integers(0, image.shape[1] - size + 1))
        tiles.append(image[top : top + size, left : left + size])
        ids.append(sample.id)
    return Calibration(np.stack(tiles)[..., None].astype(np.float32), tuple(ids), seed, source)


def chunks(rows: np.ndarray, size: int) -> list[np.ndarray]:
    """``rows`` split along the batch axis into near-equal batches of at most ``size``."""
    return np.array_split(rows, -(-len(rows) // size))
