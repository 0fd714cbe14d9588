"""Full-size probability maps from a network that sees one tile at a time.

A nucleus must never be cut in two or counted twice where tiles meet. So the image is
normalised once, split into overlapping tiles, and each tile contributes only the part of its
prediction away from its edges (tiles meet in the middle of each overlap); instances are found
afterwards, once, on the seamless full-size map. Images smaller than a tile are padded by
reflection, never resized: resizing would change the nucleus sizes the network learned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from edgeseg.backends.base import Backend


@dataclass(frozen=True)
class TileSettings:
    """How to cut images: ``size`` for dynamic-shape models (a fixed-shape model uses its
    own), ``overlap`` shared by neighbouring tiles (at least the network's receptive-field
    radius, twice over), ``multiple`` that H and W must be (16 for a 4-level U-Net), and
    ``batch_size`` tiles per backend call."""

    size: int = 256
    overlap: int = 32
    multiple: int = 1
    batch_size: int = 4

    def __post_init__(self) -> None:
        if min(self.size, self.multiple, self.batch_size) < 1 or self.overlap < 0:
            raise ValueError(f"invalid tiling {self}: sizes must be positive, overlap >= 0")
        if self.overlap >= self.size:
            raise ValueError(
                f"tile size {self.size} must be larger than the tile overlap {self.overlap} "
                "(neighbouring tiles share that many pixels): choose a larger --tile"
            )

    @classmethod
    def from_manifest(
        cls,
        manifest: Mapping[str, Any],
        size: int | None = None,
        overlap: int | None = None,
        batch_size: int | None = None,
    ) -> TileSettings:
        """The manifest's ``tile`` section, with any of its values overridden."""
        spec = manifest.get("tile", {})
        values = {
            "size": size or spec.get("size", cls.size),
            "overlap": spec.get("overlap", cls.overlap) if overlap is None else overlap,
            "multiple": spec.get("multiple", cls.multiple),
        }
        if not all(_is_whole(value) for value in values.values()):
            raise ValueError(f"the manifest's tile section must hold whole numbers: {spec}")
        whole = {key: int(value) for key, value in values.items()}
        return cls(**whole, batch_size=int(batch_size or cls.batch_size))


def _is_whole(value: Any) -> bool:
    """An int, or a float equal to one (JSON writers differ); never a bool, NaN or infinity."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or value.is_integer()


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced starts of tiles covering [0, length), neighbours sharing >= overlap."""
    if length <= tile:
        return [0]
    if overlap >= tile:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile size {tile}")
    gaps = -(-(length - tile) // (tile - overlap))
    return [index * (length - tile) // gaps for index in range(gaps + 1)]


def _kept_spans(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """The part of the axis each tile writes: neighbours meet in the middle of their overlap."""
    cuts = [0] + [(nxt + start + tile) // 2 for start, nxt in pairwise(starts)] + [length]
    return list(pairwise(cuts))


def predict_tiled(backend: Backend, image: np.ndarray, settings: TileSettings) -> np.ndarray:
    """Return float32 (H, W, C) probabilities (the backend's C maps) for a normalised
    float32 (H, W) image."""
    height, width = image.shape
    fixed = backend.input_size or (None, None)
    tile_h, tile_w = (
        size
        or min(_round_up(settings.size, settings.multiple), _round_up(length, settings.multiple))
        for size, length in zip(fixed, (height, width), strict=True)
    )
    # Only an axis shorter than its tile is padded (at the bottom/right), so it holds one tile.
    padded = np.pad(
        image.astype(np.float32, copy=False),
        ((0, max(tile_h - height, 0)), (0, max(tile_w - width, 0))),
        mode="reflect",
    )
    rows = _tile_starts(padded.shape[0], tile_h, settings.overlap)
    cols = _tile_starts(padded.shape[1], tile_w, settings.overlap)
    row_spans = _kept_spans(rows, tile_h, height)
    col_spans = _kept_spans(cols, tile_w, width)
    tiles = [(r, c) for r in range(len(rows)) for c in range(len(cols))]
    result = np.empty((height, width, backend.channels), dtype=np.float32)
    for first in range(0, len(tiles), settings.batch_size):
        chunk = tiles[first : first + settings.batch_size]
        batch = np.stack(
            [padded[rows[r] : rows[r] + tile_h, cols[c] : cols[c] + tile_w] for r, c in chunk]
        )
        for (r, c), probabilities in zip(chunk, backend.predict(batch[..., None]), strict=True):
            (top, bottom), (left, right) = row_spans[r], col_spans[c]
            result[top:bottom, left:right] = probabilities[
                top - rows[r] : bottom - rows[r], left - cols[c] : right - cols[c]
            ]
    return result
