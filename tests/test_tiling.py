"""Tiling must be invisible: the stitched map equals a whole-image prediction, nuclei on tile
borders come out whole and once, and small images are padded, never resized."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import run_reference, threshold_model

from edgeseg.backends import load_backend
from edgeseg.backends.base import Backend
from edgeseg.postprocess import PostprocessSettings, instances_from_probabilities
from edgeseg.preprocess import normalize
from edgeseg.tiling import TileSettings, _kept_spans, _tile_starts, predict_tiled

RADIUS = 8


class ReferenceBackend(Backend):
    """The threshold model's maps computed with OpenCV; records every batch it is given."""

    name = "reference"

    def __init__(self, input_size: tuple[int, int] | None = None, multiple: int = 1) -> None:
        self.input_size = input_size
        self.multiple = multiple
        self.batches: list[np.ndarray] = []

    def _run(self, batch: np.ndarray) -> np.ndarray:
        assert batch.shape[1] % self.multiple == 0 and batch.shape[2] % self.multiple == 0
        self.batches.append(batch.copy())
        return np.stack([run_reference(tile[..., 0]) for tile in batch]).astype(np.float32)


def _seam_lines(length: int, tile: int, overlap: int) -> list[int]:
    """Every place a tile edge or a stitching cut falls inside an axis of ``length``."""
    starts = _tile_starts(length, tile, overlap)
    cuts = [start for start, _ in _kept_spans(starts, tile, length)[1:]]
    edges = [start for start in starts[1:]] + [start + tile for start in starts[:-1]]
    return sorted(set(cuts + edges))


def _nuclei_on_seams(shape: tuple[int, int], tile: int, overlap: int) -> tuple[np.ndarray, int]:
    """A fluorescence-like image whose separate disks sit centred on tile edges and cuts."""
    rows = _seam_lines(shape[0], tile, overlap)
    cols = _seam_lines(shape[1], tile, overlap)
    candidates = [(y, x) for y in rows for x in range(20, shape[1] - 20, 23)]
    candidates += [(y, x) for x in cols for y in range(20, shape[0] - 20, 23)]
    centres: list[tuple[int, int]] = []
    for y, x in candidates:
        if all((y - cy) ** 2 + (x - cx) ** 2 > (2 * RADIUS + 6) ** 2 for cy, cx in centres):
            centres.append((y, x))
    mask = np.zeros(shape, np.uint8)
    for y, x in centres:
        cv2.circle(mask, (x, y), RADIUS, 1, -1)
    rng = np.random.default_rng(0)
    image = np.where(mask > 0, 180, 20) + rng.normal(0, 8, shape)
    return np.clip(image, 0, 255).astype(np.uint8), len(centres)


def test_large_image_tiled_equals_whole_image_and_keeps_border_nuclei_whole(
    tmp_path: Path,
) -> None:
    backend = load_backend(threshold_model(tmp_path / "threshold.onnx"))
    tiles = TileSettings(size=256, overlap=32, batch_size=5)
    image, count = _nuclei_on_seams((700, 900), tiles.size, tiles.overlap)
    normalized = normalize(image)

    tiled = predict_tiled(backend, normalized, tiles)
    whole = backend.predict(normalized[None, ..., None])[0]
    np.testing.assert_allclose(tiled, whole, atol=1e-6)

    settings = PostprocessSettings()
    labels = instances_from_probabilities(tiled[..., 0], tiled[..., 1], settings)
    np.testing.assert_array_equal(
        labels, instances_from_probabilities(whole[..., 0], whole[..., 1], settings)
    )
    assert count > 40
    assert labels.max() == count  # no nucleus cut in two, none counted twice
    _, components = cv2.connectedComponents((image > 100).astype(np.uint8))
    for label in range(1, count + 1):  # and each nucleus is exactly one disk
        assert np.unique(components[labels == label]).size == 1


def test_tiles_are_batched() -> None:
    backend = ReferenceBackend()
    predict_tiled(backend, np.zeros((700, 900), np.float32), TileSettings(256, 32, batch_size=5))
    assert [len(batch) for batch in backend.batches] == [5, 5, 2]  # 3 x 4 tiles


@pytest.mark.parametrize("input_size, multiple", [((256, 256), 1), (None, 16)])
def test_small_image_is_padded_not_resized(input_size: tuple | None, multiple: int) -> None:
    backend = ReferenceBackend(input_size, multiple)
    image = np.random.default_rng(1).random((100, 130), dtype=np.float32)
    probabilities = predict_tiled(backend, image, TileSettings(256, 32, multiple=multiple))
    (batch,) = backend.batches
    assert batch.shape == ((1, 256, 256, 1) if input_size else (1, 112, 144, 1))
    np.testing.assert_array_equal(batch[0, :100, :130, 0], image)  # pixels untouched
    assert probabilities.shape == (100, 130, 2)
    np.testing.assert_allclose(probabilities, run_reference(image), atol=1e-6)


@pytest.mark.parametrize("shape", [(100, 130), (600, 300)])
def test_fixed_tile_model_on_smaller_and_larger_images(tmp_path: Path, shape: tuple) -> None:
    backend = load_backend(threshold_model(tmp_path / "fixed.onnx", tile=256))
    image = normalize(np.random.default_rng(2).integers(0, 255, shape, dtype=np.uint8))
    probabilities = predict_tiled(backend, image, TileSettings(size=256, overlap=32))
    assert probabilities.shape == (*shape, 2)
    np.testing.assert_allclose(probabilities, run_reference(image), atol=1e-5)


def test_overlap_must_leave_room_for_progress() -> None:
    with pytest.raises(ValueError, match="larger than the tile overlap 64.*--tile"):
        TileSettings(64, 64)


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 150),
    width=st.integers(1, 150),
    size=st.integers(8, 64),
    overlap=st.integers(2, 7),
    multiple=st.sampled_from([1, 4, 16]),
    batch_size=st.integers(1, 6),
)
def test_any_tiling_reproduces_the_whole_image_map(
    height: int, width: int, size: int, overlap: int, multiple: int, batch_size: int
) -> None:
    """Overlap 2 suffices for a 3x3 receptive field, whatever the sizes."""
    image = np.random.default_rng(height * 1000 + width).random((height, width), np.float32)
    tiles = TileSettings(size, overlap, multiple, batch_size)
    probabilities = predict_tiled(ReferenceBackend(multiple=multiple), image, tiles)
    np.testing.assert_allclose(probabilities, run_reference(image), atol=1e-6)


def test_tile_starts_cover_the_axis_with_the_overlap() -> None:
    for length, tile, overlap in itertools.product([256, 257, 700, 1000], [64, 256], [0, 32]):
        starts = _tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] == max(length - tile, 0)
        assert all(tile - overlap >= b - a > 0 for a, b in itertools.pairwise(starts))
