"""Flip averaging: each view is mapped back to the image before averaging, so a flip-equivariant
network is unchanged by it, a network's left/right bias is averaged out, and tiling still
applies to every view."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.backends.base import Backend
from edgeseg.segmenter import Segmenter
from edgeseg.test_time_flips import FLIPS, predict_flip_averaged
from edgeseg.tiling import TileSettings, predict_tiled


class BiasedBackend(Backend):
    """Foreground = the tile itself (flip-equivariant); boundary = a left-to-right ramp across
    the tile (a network that prefers one side); counts the tiles it sees."""

    name = "biased"

    def __init__(self) -> None:
        self.tiles = 0

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self.tiles += len(batch)
        ramp = np.broadcast_to(np.linspace(0.0, 1.0, batch.shape[2]), batch.shape[:3])
        return np.concatenate([batch, ramp[..., None]], axis=-1)


@pytest.mark.parametrize("shape", [(40, 56), (150, 97)])
def test_flips_keep_equivariant_outputs_and_average_out_a_bias(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(3).random(shape, dtype=np.float32)
    settings = TileSettings(size=64, overlap=16)
    backend = BiasedBackend()
    averaged = predict_flip_averaged(backend, image, settings)
    single = BiasedBackend()
    plain = predict_tiled(single, image, settings)
    assert averaged.shape == (*shape, 2) and averaged.dtype == np.float32
    np.testing.assert_allclose(averaged[..., 0], plain[..., 0], atol=1e-6)
    np.testing.assert_allclose(averaged[..., 1], averaged[:, ::-1, 1], atol=1e-6)
    assert not np.allclose(plain[..., 1], plain[:, ::-1, 1])
    assert backend.tiles == len(FLIPS) * single.tiles


def test_segmenter_uses_flips_only_when_asked() -> None:
    image = np.random.default_rng(4).random((48, 48), dtype=np.float32)
    manifest = {"name": "biased", "tile": {"size": 64}, "postprocess": {}}
    plain = Segmenter(BiasedBackend(), manifest).predict_probabilities(image)
    flipped = Segmenter(BiasedBackend(), manifest, test_time_flips=True)
    averaged = flipped.predict_probabilities(image)
    assert not np.allclose(plain[..., 1], plain[:, ::-1, 1])
    np.testing.assert_allclose(averaged[..., 1], averaged[:, ::-1, 1], atol=1e-6)
    assert flipped.backend.tiles == len(FLIPS)
