"""The DSB2018 stage1 samples every training run uses, so all models see the same data.

Training ids come from the chosen copy (``stage1_train`` or ``stage1_train_fixed``);
validation ids always from ``stage1_train`` (the fixed split draws them from ids identical in
both copies), so every run is selected on the same images.
"""

from __future__ import annotations

from pathlib import Path

from edgeseg.data.cache import load_dataset
from edgeseg.data.dataset import Sample
from training.split import load_split


def load_train_validation(
    data_root: Path, data_copy: str, cache_dir: Path | None
) -> tuple[list[Sample], list[Sample]]:
    """(training samples, validation samples) of the fixed split under ``data_root``."""
    train_ids = set(load_split()["train"])
    train_samples = [s for s in load_dataset(data_root / data_copy, cache_dir) if s.id in train_ids]
    return train_samples, load_validation(data_root, cache_dir)


def load_validation(data_root: Path, cache_dir: Path | None) -> list[Sample]:
    """The validation samples of the fixed split, which every run is selected and tuned on."""
    return load_dataset(data_root / "stage1_train", cache_dir, ids=load_split()["validation"])
