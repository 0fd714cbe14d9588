"""The typical nucleus size a model was trained on, measured from its training labels.

It goes into the model's manifest (``nucleus_diameter``) and from there into every export, so
`edgeseg segment --diameter` can rescale images whose nuclei are much bigger or smaller to
the size the model knows (edgeseg/rescale.py). Measured, never assumed: a run trained on
other data records its own size.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.rescale import median_diameter
from training.config import TrainConfig
from training.data_loading import load_train_validation
from training.split import SPLIT_FILE

METHOD = (
    "median over the training images of each image's median equivalent diameter "
    "2*sqrt(area/pi) of its nuclei (edgeseg.rescale.median_diameter, as --diameter auto)"
)


def median_nucleus_diameter(label_images: Iterable[np.ndarray]) -> tuple[float, int]:
    """(median over images of each image's median diameter, images counted).

    Per-image medians first, so a few crowded images do not outweigh the rest; images
    without nuclei say nothing about nucleus size and are left out. Each image is measured
    as ``--diameter auto`` measures a first pass, so the two sizes it compares agree.
    """
    medians = [
        diameter for labels in label_images if (diameter := median_diameter(labels)) is not None
    ]
    if not medians:
        raise ValueError("no nuclei in the training labels: their size cannot be measured")
    return float(np.median(medians)), len(medians)


def nucleus_diameter_record(label_images: Iterable[np.ndarray], source: str) -> dict[str, Any]:
    """The manifest's ``nucleus_diameter``: the value the runtime reads, and how it was got."""
    median, images = median_nucleus_diameter(label_images)
    return {"median_px": round(median, 2), "images": images, "source": source, "method": METHOD}


def training_source(data_copy: str) -> str:
    """Which labels were measured, in the words the manifest records."""
    return f"{data_copy} training split ({SPLIT_FILE.name})"


def measure_run(run_dir: Path, data_root: Path, cache_dir: Path | None) -> dict[str, Any]:
    """``nucleus_diameter`` of the run in ``run_dir``: its data copy's training split."""
    data_copy = TrainConfig.from_file(run_dir / "config.json").data_copy
    train_samples, _ = load_train_validation(data_root, data_copy, cache_dir)
    return nucleus_diameter_record((s.labels for s in train_samples), training_source(data_copy))
