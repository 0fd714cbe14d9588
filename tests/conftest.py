"""Shared fixtures: where the real DSB2018 data is, and small synthetic nuclei images."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.preprocess import RGB_FROM_HED

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_root() -> Path | None:
    candidates = [os.environ.get("EDGESEG_DATA"), REPO_ROOT.parent / "shared" / "data" / "dsb2018"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "stage1_test").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def dsb_root() -> Path:
    """The real DSB2018 folder; tests using it are skipped with a reason when it is absent."""
    root = _data_root()
    if root is None:
        pytest.skip("real DSB2018 data not found: set EDGESEG_DATA=/path/to/dsb2018")
    return root


def synthetic_nuclei(
    shape: tuple[int, int] = (128, 128), count: int = 12, seed: int = 0, touching: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like uint8 image and its uint16 instance labels (disks, some touching)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint16)
    for index in range(1, count + 1):
        radius = int(rng.integers(4, 10))
        center = (
            int(rng.integers(radius, shape[1] - radius)),
            int(rng.integers(radius, shape[0] - radius)),
        )
        disk = np.zeros(shape, dtype=np.uint8)
        cv2.circle(disk, center, radius, 1, -1)
        labels[(disk > 0) & (touching | (labels == 0))] = index
    image = np.where(labels > 0, 180, 20).astype(np.float32)
    image += rng.normal(0, 8, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def synthetic_he(
    shape: tuple[int, int] = (128, 128), seed: int = 0, eosin: float = 1.2
) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like uint8 RGB image (Beer-Lambert: hematoxylin nuclei in eosin-pink
    cytoplasm that fills the left two thirds, white background) and its instance labels."""
    _, labels = synthetic_nuclei(shape, seed=seed, touching=False)
    rng = np.random.default_rng(seed)
    hematoxylin = np.where(labels > 0, 0.9, 0.0) + rng.uniform(0, 0.05, shape)
    cytoplasm = np.zeros(shape, np.float32)
    cytoplasm[:, : 2 * shape[1] // 3] = eosin
    density = hematoxylin[..., None] * RGB_FROM_HED[0] + cytoplasm[..., None] * RGB_FROM_HED[1]
    return np.clip(255 * np.exp(-density), 0, 255).astype(np.uint8), labels


def tiny_training(**changes: object):
    """A TrainConfig for a 2-level, 4-filter U-Net that trains one 2-step epoch on 32 px
    crops: what tests train (never a real model)."""
    from training.augment import AugmentConfig
    from training.config import TrainConfig

    defaults = {
        "model": "unet",
        "model_kwargs": {"base_filters": 4, "depth": 2},
        "epochs": 1,
        "steps_per_epoch": 2,
        "batch_size": 2,
        "augment": AugmentConfig(crop=32),
    }
    return TrainConfig(**{**defaults, **changes})
