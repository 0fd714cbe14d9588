"""The training nuclei's size recorded in a model's manifest, on labels of known size."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_nuclei
from test_data import write_kaggle_sample

from edgeseg.rescale import median_diameter
from training import data_loading
from training.config import TrainConfig
from training.nucleus_size import measure_run, median_nucleus_diameter, nucleus_diameter_record


def _squares(*sides: int) -> np.ndarray:
    """Squares of the given sides, apart on one row; ids from 7 (they need not be 1..N)."""
    labels = np.zeros((40, 40 * max(len(sides), 1)), np.uint16)
    for index, side in enumerate(sides):
        labels[2 : 2 + side, 40 * index + 2 : 40 * index + 2 + side] = index + 7
    return labels


def _diameter(area: float) -> float:
    return 2 * math.sqrt(area / math.pi)


def test_an_image_s_diameter_is_that_of_the_disk_of_its_median_area() -> None:
    assert median_diameter(_squares(10, 30, 20)) == pytest.approx(_diameter(400))
    assert median_diameter(np.zeros((8, 8), np.uint16)) is None


def test_median_of_per_image_medians_skips_images_without_nuclei() -> None:
    images = [_squares(10, 10, 30), _squares(30), _squares(20, 20), _squares()]
    # per-image medians: d(100), d(900), d(400); the empty image says nothing about size
    assert median_nucleus_diameter(images) == (pytest.approx(_diameter(400)), 3)
    with pytest.raises(ValueError, match="no nuclei"):
        median_nucleus_diameter([_squares()])
    record = nucleus_diameter_record(images, "squares")
    assert record["median_px"] == round(_diameter(400), 2) and record["images"] == 3
    assert record["source"] == "squares" and "2*sqrt(area/pi)" in record["method"]


def test_a_run_is_measured_on_its_data_copys_training_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        data_loading, "load_split", lambda: {"train": ["a", "b"], "validation": ["c"]}
    )
    for sample_id, radius in (("a", 5), ("b", 9), ("c", 20)):
        image, _ = synthetic_nuclei((64, 64), count=0)
        labels = np.zeros((64, 64), np.uint16)
        yy, xx = np.mgrid[:64, :64]
        labels[(yy - 32) ** 2 + (xx - 32) ** 2 <= radius**2] = 1
        image[labels > 0] = 200
        write_kaggle_sample(tmp_path / "dsb" / "stage1_train", sample_id, image, labels)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(TrainConfig(model="unet", data_copy="stage1_train").to_json())
    record = measure_run(run, tmp_path / "dsb", cache_dir=None)
    assert record["images"] == 2  # validation image "c" (radius 20) is not measured
    assert record["median_px"] == pytest.approx(14, abs=0.5)  # median of ~10 and ~18
    assert record["source"] == "stage1_train training split (dsb2018_stage1.json)"
