"""Summarise a dataset folder and fail on the first malformed file."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeseg.data.dataset import find_samples, load_sample
from edgeseg.preprocess import image_kind


@dataclass
class DatasetSummary:
    root: Path
    images: int = 0
    nuclei: int = 0
    sizes: Counter = field(default_factory=Counter)
    channels: Counter = field(default_factory=Counter)
    dtypes: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        def top(counter: Counter, limit: int = 8) -> str:
            shown = ", ".join(f"{key} x{n}" for key, n in counter.most_common(limit))
            rest = len(counter) - limit
            return shown + (f", ... ({rest} more)" if rest > 0 else "")

        return [
            f"dataset:  {self.root}",
            f"images:   {self.images}",
            f"nuclei:   {self.nuclei}",
            f"sizes:    {top(self.sizes)}",
            f"channels: {top(self.channels)}",
            f"dtypes:   {top(self.dtypes)}",
            f"kinds:    {top(self.kinds)}",
        ]


def check_dataset(root: str | os.PathLike, progress=None) -> DatasetSummary:
    """Decode every sample; raises DatasetError naming the first bad file."""
    refs = find_samples(root)
    summary = DatasetSummary(Path(root))
    for ref in progress(refs) if progress else refs:
        sample = load_sample(ref)
        height, width = sample.image.shape[:2]
        summary.images += 1
        summary.nuclei += len(ref.mask_paths) or int(np.unique(sample.labels).size - 1)
        summary.sizes[f"{height}x{width}"] += 1
        channels = 1 if sample.image.ndim == 2 else sample.image.shape[2]
        summary.channels[{1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}.get(channels)] += 1
        summary.dtypes[str(sample.image.dtype)] += 1
        summary.kinds[image_kind(sample.image)] += 1
    return summary
